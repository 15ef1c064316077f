"""RSNA 2nd place's fold ensembling on raw RetinaNet head outputs (one anchor grid).

Per anchor, across the fold models: the mean of the class probabilities, the mean of
the position offsets (dx, dy), and for the size offsets (dw, dh)
p20 + (p20 - p80) x 0.9: the low percentile pushed further down by the models'
disagreement, so boxes the folds disagree on come out smaller. The fused outputs are
decoded as the 2nd place did: score > 0.025, class-wise NMS at IoU 0.05, and boxes
under half the image's top score dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import batched_nms, clip_boxes_to_image

from cxrdet.ensemble.tables import EnsembleInputError, check_number
from cxrdet.errors import ConfigError

REFERENCE_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # regression targets / [0.1, 0.1, 0.2, 0.2]


@dataclass(frozen=True)
class AnchorFusionParams:
    low_percentile: float = 20.0
    high_percentile: float = 80.0
    spread: float = 0.9  # size offsets = p_low + (p_low - p_high) x spread
    score_floor: float = 0.025  # anchors scoring above it are decoded
    candidates: int = 1000  # best-scoring anchors per image decoded (bounds the NMS cost)
    nms_iou: float = 0.05
    top_ratio: float = 0.5  # boxes below top_ratio x the image's best score are dropped
    top_k: int = 100  # boxes kept per image

    def __post_init__(self) -> None:
        check_number("low_percentile", self.low_percentile, 0.0, 100.0)
        check_number("high_percentile", self.high_percentile, self.low_percentile, 100.0)
        check_number("spread", self.spread, 0.0, math.inf, high_open=True)
        check_number("score_floor", self.score_floor, 0.0, 1.0)
        check_number("nms_iou", self.nms_iou, 0.0, 1.0)
        check_number("top_ratio", self.top_ratio, 0.0, 1.0)
        for name in ("candidates", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class FusedDetections(NamedTuple):
    boxes: Tensor  # (n, 4) xyxy, the anchors' (input) pixels
    scores: Tensor  # (n,)
    labels: Tensor  # (n,) box class ids


def percentile(values: Tensor, q: float) -> Tensor:
    """The q-th percentile along dim 0 with linear interpolation (numpy's default).
    By hand: torch.quantile refuses inputs of more than 2^24 values."""
    ordered = values.sort(dim=0).values
    position = q / 100.0 * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def fuse_anchor_outputs(
    probs: Tensor, deltas: Tensor, params: AnchorFusionParams = AnchorFusionParams()
) -> tuple[Tensor, Tensor]:
    """(probs (..., anchors, classes), deltas (..., anchors, 4)) fused over dim 0, the models.

    probs: (models, ..., anchors, classes), the sigmoid of each model's cls_logits;
    deltas: (models, ..., anchors, 4), each model's box_deltas (dx, dy, dw, dh of its box coder).
    """
    if probs.dim() < 3 or deltas.shape[:-1] != probs.shape[:-1] or deltas.shape[-1] != 4:
        raise EnsembleInputError(
            f"anchor fusion wants probs (models, ..., anchors, classes) and deltas "
            f"(models, ..., anchors, 4) on one grid; "
            f"got {tuple(probs.shape)} and {tuple(deltas.shape)}"
        )
    if not ((probs >= 0) & (probs <= 1)).all():
        raise EnsembleInputError(
            "anchor fusion: probs must be probabilities in [0, 1] (sigmoid of the logits)"
        )
    low = percentile(deltas[..., 2:], params.low_percentile)
    high = percentile(deltas[..., 2:], params.high_percentile)
    fused = torch.cat([deltas[..., :2].mean(dim=0), low + (low - high) * params.spread], dim=-1)
    return probs.mean(dim=0), fused


def decode_fused(
    probs: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    image_size: tuple[int, int],
    params: AnchorFusionParams = AnchorFusionParams(),
    box_weights: tuple[float, float, float, float] = REFERENCE_BOX_WEIGHTS,
) -> list[FusedDetections]:
    """Per image of fused probs (images, anchors, classes) and deltas (images, anchors, 4):
    its boxes. anchors: (anchors, 4) xyxy; image_size: (height, width) to clip to;
    box_weights: the model's box coder weights."""
    coder = det_utils.BoxCoder(weights=box_weights)
    anchors = anchors.float()
    classes = probs.shape[-1]
    detections = []
    for scores, offsets in zip(probs.float(), deltas.float()):
        flat = scores.flatten()
        keep = (flat > params.score_floor).nonzero().squeeze(1)
        if len(keep) > params.candidates:
            keep = keep[flat[keep].topk(params.candidates).indices]
        anchor_index, labels = keep // classes, keep % classes
        boxes = clip_boxes_to_image(
            coder.decode_single(offsets[anchor_index], anchors[anchor_index]), image_size
        )
        kept = batched_nms(boxes, flat[keep], labels, params.nms_iou)  # by descending score
        if len(kept):
            kept = kept[flat[keep][kept] >= params.top_ratio * flat[keep][kept[0]]][: params.top_k]
        detections.append(FusedDetections(boxes[kept], flat[keep][kept], labels[kept]))
    return detections
