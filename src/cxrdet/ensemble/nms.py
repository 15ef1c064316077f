"""Suppression baselines over the members' pooled boxes: NMS and soft-NMS.

Unlike the fusions, they keep boxes as they are (soft-NMS lowers their scores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torchvision.ops import nms

from cxrdet.ensemble.group import BoxGroup
from cxrdet.ensemble.tables import check_number
from cxrdet.metrics.iou import pairwise_iou


@dataclass(frozen=True)
class Nms:
    iou_thr: float = 0.5  # reference RetinaNet inference NMS
    needs_sizes: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_number("iou_thr", self.iou_thr, 0.0, 1.0)

    def fuse(self, group: BoxGroup) -> tuple[np.ndarray, np.ndarray]:
        keep = nms(
            torch.from_numpy(group.xyxy), torch.from_numpy(group.scores), self.iou_thr
        ).numpy()
        return group.xyxy[keep], group.scores[keep]


@dataclass(frozen=True)
class SoftNms:
    """Gaussian soft-NMS (Bodla et al. 2017): score x exp(-IoU^2 / sigma)."""

    sigma: float = 0.5  # the paper's
    score_thr: float = 0.001  # boxes whose decayed score falls below are dropped
    needs_sizes: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_number("sigma", self.sigma, 0.0, low_open=True)
        check_number("score_thr", self.score_thr, 0.0, 1.0)

    def fuse(self, group: BoxGroup) -> tuple[np.ndarray, np.ndarray]:
        return soft_nms(
            group.xyxy, group.scores, lambda iou: np.exp(-(iou**2) / self.sigma), self.score_thr
        )


@dataclass(frozen=True)
class LinearSoftNms:
    """Linear soft-NMS (Bodla et al. 2017): score x (1 - IoU) when IoU >= iou_thr."""

    iou_thr: float = 0.3  # the paper's N_t
    score_thr: float = 0.001
    needs_sizes: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_number("iou_thr", self.iou_thr, 0.0, 1.0)
        check_number("score_thr", self.score_thr, 0.0, 1.0)

    def fuse(self, group: BoxGroup) -> tuple[np.ndarray, np.ndarray]:
        return soft_nms(
            group.xyxy,
            group.scores,
            lambda iou: np.where(iou >= self.iou_thr, 1.0 - iou, 1.0),
            self.score_thr,
        )


def soft_nms(
    xyxy: np.ndarray,
    scores: np.ndarray,
    decay: Callable[[np.ndarray], np.ndarray],
    score_thr: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the best box, multiply every remaining score by decay(IoU with it), drop those
    below `score_thr`, repeat. By hand: torchvision has hard NMS only."""
    scores = scores.astype(np.float64)
    iou = pairwise_iou(xyxy, xyxy)
    remaining = np.flatnonzero(scores >= score_thr)
    kept = []
    while remaining.size:
        best = remaining[np.argmax(scores[remaining])]
        kept.append(best)
        remaining = remaining[remaining != best]
        scores[remaining] *= decay(iou[best, remaining])
        remaining = remaining[scores[remaining] >= score_thr]
    return xyxy[kept].reshape(-1, 4), scores[kept]
