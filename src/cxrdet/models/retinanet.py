"""RetinaNet on a one-channel timm backbone, with the RSNA 2nd place's modifications.

Built from torchvision's detection parts (FeaturePyramidNetwork + LastLevelP6P7, the
anchor generator, BoxCoder, Matcher, sigmoid_focal_loss, batched_nms); written here is
only what they lack:
  - an FPN over P2-P7, P2 (stride 4, small anchors) optional;
  - dropout before the anchor-classification conv (classification overfits faster
    than box regression);
  - a global image-classification head on the last backbone level (e.g. the 3 RSNA
    image labels), with dropout and a loss weight (0.1 in the 2nd place);
  - a frozen encoder for the first epoch(s) and frozen batch norm, as options.
Images without boxes count in the loss: all their anchors are negatives.

The forward pass returns raw head outputs (and the anchors); `RetinaNetLoss` and
`decode` turn them into a loss or detections, so DistributedDataParallel wraps the
forward pass alone.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import (
    FeaturePyramidNetwork,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    sigmoid_focal_loss,
)
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation

from cxrdet.config import DetectorParams
from cxrdet.errors import ConfigError
from cxrdet.models.anchors import AnchorConfig, StridedAnchorGenerator, resolve_anchors
from cxrdet.models.backbone import create_backbone
from cxrdet.models.files import load_model_file, save_model_file

DETECTOR_KIND = "retinanet"
EXTRA_LEVELS = 2  # P6 and P7, each one stride-2 conv above P5
GROUPS = 32  # GroupNorm groups in the heads (fewer when the channels do not divide)
# At least 2 channels per group: a single image's 1x1 P7 map (the last, odd-sized batch of a
# 128 px validation set) would otherwise give groups of one value, which GroupNorm refuses.
MIN_GROUP_CHANNELS = 2


@dataclass(frozen=True)
class RetinaNetConfig:
    """Everything that rebuilds the network (saved with its weights)."""

    backbone: str
    num_classes: int  # box classes (RSNA 1, VinBigData 14)
    anchors: AnchorConfig
    image_classes: int = 0  # outputs of the global image head; 0: no global head
    p2: bool = True  # FPN level P2 (stride 4) for small boxes
    fpn_channels: int = 256
    head_convs: int = 4  # 3x3 conv + ReLU layers in each head before its output conv
    head_norm: bool = (
        False  # GroupNorm in the head convs (torchvision's RetinaNet v2): faster convergence
    )
    cls_dropout: float = 0.0  # before the anchor-classification conv
    global_dropout: float = 0.0  # before the global head's linear layer
    frozen_bn: bool = False  # the encoder's batch norms keep their loaded statistics
    prior: float = 0.01  # initial foreground probability of every anchor
    box_weights: tuple[float, float, float, float] = (
        10.0,
        10.0,
        5.0,
        5.0,
    )  # box targets / [0.1, 0.1, 0.2, 0.2]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "anchors": self.anchors.to_dict()}

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> RetinaNetConfig:
        return cls(
            **{
                **content,
                "anchors": AnchorConfig.from_dict(content["anchors"]),
                "box_weights": tuple(content["box_weights"]),
            }
        )


@dataclass(frozen=True)
class LossConfig:
    fg_iou: float = 0.5  # anchors at or above: positives
    bg_iou: float = 0.4  # anchors below: negatives; in between: ignored
    alpha: float = 0.25  # focal loss
    gamma: float = 2.0
    smooth_l1_beta: float = 1 / 9
    global_weight: float = 0.1  # weight of the global head's cross-entropy


@dataclass(frozen=True)
class DecodeConfig:
    score_floor: float = 0.05  # keep anchors scoring above this
    nms_iou: float = 0.5
    top_k: int = 100  # detections kept per image
    candidates: int = 1000  # best-scoring anchors per image decoded before NMS


class RetinaHead(nn.Module):
    """A conv tower shared by all pyramid levels and an output conv with `outputs` values
    per anchor; returns (N, sum of H x W x anchors, outputs) in the anchor grid's order."""

    def __init__(
        self,
        channels: int,
        convs: int,
        anchors: int,
        outputs: int,
        *,
        norm: bool = False,
        dropout: float = 0.0,
        bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.outputs = outputs
        norm_layer = (
            partial(nn.GroupNorm, math.gcd(GROUPS, max(1, channels // MIN_GROUP_CHANNELS)))
            if norm
            else None
        )
        self.tower = nn.Sequential(
            *(Conv2dNormActivation(channels, channels, norm_layer=norm_layer) for _ in range(convs))
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv2d(channels, anchors * outputs, kernel_size=3, padding=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, pyramid: list[Tensor]) -> Tensor:
        levels = []
        for features in pyramid:
            out = self.out(self.dropout(self.tower(features)))
            n, _, h, w = out.shape
            levels.append(
                out.view(n, -1, self.outputs, h, w)
                .permute(0, 3, 4, 1, 2)
                .reshape(n, -1, self.outputs)
            )
        return torch.cat(levels, dim=1)


def create_detector_backbone(
    name: str,
    *,
    pretrained_path: str | Path | None = None,
    imagenet: bool = False,
    allow_download: bool = False,
    param_key: str = "detector.backbone",
) -> nn.Module:
    """The one-channel timm backbone as feature maps (all of its levels)."""
    return create_backbone(
        name,
        features_only=True,
        pretrained_path=pretrained_path,
        imagenet=imagenet,
        allow_download=allow_download,
        param_key=param_key,
    )


def pyramid_levels(
    feature_info: Any, p2: bool, param_key: str = "detector.backbone"
) -> tuple[list[int], tuple[int, ...]]:
    """(backbone levels feeding the FPN: the last 4 (C2-C5) or 3 (C3-C5), strides of P2|P3..P7).

    Strides are timm's `feature_info.reduction()` (PITFALLS: never image size // feature size);
    P6 and P7 double the last one twice."""
    used = 4 if p2 else 3
    if len(feature_info) < used:
        raise ConfigError(
            f"{param_key}: the backbone has {len(feature_info)} feature levels; "
            f"the FPN needs {used}"
        )
    levels = list(range(len(feature_info) - used, len(feature_info)))
    reductions = [int(feature_info.reduction()[i]) for i in levels]
    return levels, (*reductions, *(reductions[-1] * 2 ** (k + 1) for k in range(EXTRA_LEVELS)))


class RetinaNet(nn.Module):
    """Input (N, 1, H, W) normalised images, H and W multiples of `max_stride`.

    forward -> {"cls_logits": (N, A, classes), "box_deltas": (N, A, 4), "anchors": (A, 4)
    xyxy input pixels, "image_logits": (N, image_classes) when the global head is on}.
    """

    def __init__(self, config: RetinaNetConfig, backbone: nn.Module) -> None:
        """`backbone`: a timm `features_only` model (see `create_detector_backbone`)."""
        super().__init__()
        self.config = config
        self.backbone = freeze_batch_norm_2d(backbone) if config.frozen_bn else backbone
        self.levels, self.strides = pyramid_levels(backbone.feature_info, config.p2)
        channels = [int(backbone.feature_info.channels()[i]) for i in self.levels]
        width = config.fpn_channels
        self.fpn = FeaturePyramidNetwork(channels, width, extra_blocks=LastLevelP6P7(width, width))
        per_location = config.anchors.per_location
        self.anchor_generator = StridedAnchorGenerator(config.anchors, self.strides)
        self.box_coder = det_utils.BoxCoder(weights=config.box_weights)
        prior_bias = -math.log((1 - config.prior) / config.prior)
        self.cls_head = RetinaHead(
            width,
            config.head_convs,
            per_location,
            config.num_classes,
            norm=config.head_norm,
            dropout=config.cls_dropout,
            bias=prior_bias,
        )
        self.box_head = RetinaHead(width, config.head_convs, per_location, 4, norm=config.head_norm)
        self.global_head = (
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Dropout(config.global_dropout),
                nn.Linear(channels[-1], config.image_classes),
            )
            if config.image_classes
            else None
        )
        self.encoder_frozen = False

    @property
    def max_stride(self) -> int:
        """P7's stride: training inputs are multiples of it, so every level tiles the image
        exactly."""
        return self.strides[-1]

    @property
    def pad_multiple(self) -> int:
        """The backbone's last stride: other input sizes (TTA scales) are padded to a multiple of
        it. P6 and P7 then round up, with the same anchor-to-cell geometry as in training."""
        return self.strides[-1 - EXTRA_LEVELS]

    def check_image_size(self, size: int, key: str) -> None:
        """ConfigError naming `key` unless `size` is a multiple of the largest stride (P7)."""
        if size % self.max_stride:
            lower, upper = (
                size // self.max_stride * self.max_stride,
                (size // self.max_stride + 1) * self.max_stride,
            )
            raise ConfigError(
                f"{key}: {size} is not a multiple of the largest stride {self.max_stride} "
                f"(levels {'P2' if self.config.p2 else 'P3'}-P7 of {self.config.backbone!r}); "
                f"use {lower or upper} or {upper}"
            )

    def freeze_encoder(self, frozen: bool) -> None:
        """A frozen encoder gets no gradients and keeps its batch-norm statistics (eval mode)."""
        self.encoder_frozen = frozen
        self.backbone.train(self.training and not frozen)

    def train(self, mode: bool = True) -> RetinaNet:
        super().train(mode)
        self.backbone.train(mode and not self.encoder_frozen)
        return self

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            features = self.backbone(images)
        selected = OrderedDict((f"c{i}", features[i]) for i in self.levels)
        pyramid = list(self.fpn(selected).values())
        outputs = {
            "cls_logits": self.cls_head(pyramid),
            "box_deltas": self.box_head(pyramid),
            "anchors": self.anchor_generator.grid(pyramid),
        }
        if self.global_head is not None:
            outputs["image_logits"] = self.global_head(features[self.levels[-1]])
        return outputs

    def detect(
        self, images: Tensor, image_size: tuple[int, int], config: DecodeConfig
    ) -> tuple[list[Detections], Tensor | None]:
        """(per-image detections, global-head probabilities or None) of normalised `images`;
        `image_size` is their content (boxes are clipped to it; the rest is padding). Every
        family's model answers `detect` alike: prediction never asks which family it runs."""
        outputs = self(images)
        return decode(outputs, self.box_coder, image_size, config), global_head_probabilities(
            outputs
        )


class RetinaNetLoss:
    """Focal loss over every non-ignored anchor and smooth-L1 over the positive ones, both
    normalised by the batch's positive anchors (at least 1, so that a batch of images
    without boxes still teaches the negatives), plus the weighted global cross-entropy."""

    def __init__(self, box_coder: det_utils.BoxCoder, config: LossConfig = LossConfig()) -> None:
        self.config = config
        self.matcher = det_utils.Matcher(
            config.fg_iou, config.bg_iou, allow_low_quality_matches=True
        )
        self.box_coder = box_coder  # the model's: targets are encoded as its deltas are decoded

    def match(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Per anchor: the index of its box, or Matcher.BELOW_LOW_THRESHOLD / BETWEEN_THRESHOLDS."""
        if boxes.numel() == 0:
            return torch.full(
                (len(anchors),),
                self.matcher.BELOW_LOW_THRESHOLD,
                dtype=torch.int64,
                device=anchors.device,
            )
        return self.matcher(box_iou(boxes, anchors))

    def __call__(
        self,
        outputs: dict[str, Tensor],
        boxes: list[Tensor],
        labels: list[Tensor],
        image_labels: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """(total loss, its parts). `boxes[i]` (n_i, 4) xyxy input pixels, `labels[i]` (n_i,)
        class ids."""
        anchors = outputs["anchors"].float()
        cls_logits, deltas = outputs["cls_logits"].float(), outputs["box_deltas"].float()
        matched = torch.stack([self.match(b, anchors) for b in boxes])  # (N, A)
        positive = matched >= 0
        targets = torch.zeros_like(cls_logits)
        for i, (image_boxes, image_labels_) in enumerate(zip(boxes, labels)):
            rows = positive[i].nonzero().squeeze(1)
            targets[i, rows, image_labels_[matched[i, rows]]] = 1.0
        valid = matched != self.matcher.BETWEEN_THRESHOLDS
        normaliser = positive.sum().clamp(min=1)
        config = self.config
        cls_loss = (
            sigmoid_focal_loss(
                cls_logits[valid],
                targets[valid],
                alpha=config.alpha,
                gamma=config.gamma,
                reduction="sum",
            )
            / normaliser
        )
        image_index, anchor_index = positive.nonzero(as_tuple=True)
        if len(anchor_index):
            matched_boxes = torch.cat(
                [b[matched[i, positive[i]]] for i, b in enumerate(boxes) if positive[i].any()]
            )
            box_targets = self.box_coder.encode_single(matched_boxes, anchors[anchor_index])
            box_loss = (
                F.smooth_l1_loss(
                    deltas[image_index, anchor_index],
                    box_targets,
                    beta=config.smooth_l1_beta,
                    reduction="sum",
                )
                / normaliser
            )
        else:
            box_loss = deltas.sum() * 0.0  # keeps the regression head in the graph
        total = cls_loss + box_loss
        parts = {"cls": cls_loss.item(), "box": box_loss.item()}
        if "image_logits" in outputs and image_labels is not None:
            global_loss = F.cross_entropy(outputs["image_logits"].float(), image_labels)
            total = total + config.global_weight * global_loss
            parts["global"] = global_loss.item()
        return total, parts


@dataclass
class Detections:
    boxes: Tensor  # (n, 4) xyxy input pixels
    scores: Tensor  # (n,)
    labels: Tensor  # (n,) box class ids


def decode(
    outputs: dict[str, Tensor],
    box_coder: det_utils.BoxCoder,
    image_size: tuple[int, int],
    config: DecodeConfig,
) -> list[Detections]:
    """Per image: anchors scoring above the floor (best `candidates`), decoded, clipped to the
    image, class-wise NMS, best `top_k`."""
    anchors = outputs["anchors"].float()
    scores_all = outputs["cls_logits"].float().sigmoid()
    deltas_all = outputs["box_deltas"].float()
    num_classes = scores_all.shape[-1]
    detections = []
    for scores, deltas in zip(scores_all, deltas_all):
        flat = scores.flatten()
        keep = (flat > config.score_floor).nonzero().squeeze(1)
        if len(keep) > config.candidates:
            keep = keep[flat[keep].topk(config.candidates).indices]
        anchor_index, labels = keep // num_classes, keep % num_classes
        boxes = clip_boxes_to_image(
            box_coder.decode_single(deltas[anchor_index], anchors[anchor_index]), image_size
        )
        kept = batched_nms(boxes, flat[keep], labels, config.nms_iou)[: config.top_k]
        detections.append(Detections(boxes[kept], flat[keep][kept], labels[kept]))
    return detections


def global_head_probabilities(outputs: dict[str, Tensor]) -> Tensor | None:
    """Softmax of the global head, (N, image_classes); None without a global head."""
    logits = outputs.get("image_logits")
    return None if logits is None else logits.float().softmax(dim=1)


def save_detector_file(path: Path, kind: str, model: nn.Module, extra: dict[str, Any]) -> None:
    """Weights + the model's config (any detector family: `model.config.to_dict()`); `extra`
    describes use (image_size, class names, decode params, fold...)."""
    save_model_file(path, kind, model.state_dict(), {"model": model.config.to_dict(), **extra})


def load_detector_file(
    path: Path, kind: str, model_class: type, config_class: type
) -> tuple[Any, dict[str, Any]]:
    """(model, config) of a file `save_detector_file` wrote: `model_class(config, backbone)`."""
    state_dict, config = load_model_file(path, kind)
    model_config = config_class.from_dict(config["model"])
    model = model_class(model_config, create_detector_backbone(model_config.backbone))
    model.load_state_dict(state_dict)
    return model, config


def save_detector(path: Path, model: RetinaNet, extra: dict[str, Any]) -> None:
    save_detector_file(path, DETECTOR_KIND, model, extra)


def load_detector(path: Path) -> tuple[RetinaNet, dict[str, Any]]:
    return load_detector_file(path, DETECTOR_KIND, RetinaNet, RetinaNetConfig)


def build_retinanet(
    params: DetectorParams,
    num_classes: int,
    image_classes: int,
    tuned_anchors: dict[str, Any] | None = None,
    tuned_key: str = "anchors.json",
    weights: dict[str, Any] | None = None,
) -> RetinaNet:
    backbone = create_detector_backbone(
        params.backbone, param_key="detector.backbone", **(weights or {})
    )
    _, strides = pyramid_levels(backbone.feature_info, params.p2)
    config = RetinaNetConfig(
        backbone=params.backbone,
        num_classes=num_classes,
        anchors=resolve_anchors(params.anchors, strides, tuned_anchors, tuned_key),
        image_classes=image_classes,
        p2=params.p2,
        fpn_channels=params.fpn_channels,
        head_convs=params.head_convs,
        head_norm=params.head_norm,
        cls_dropout=params.cls_dropout,
        global_dropout=params.global_dropout,
        frozen_bn=params.frozen_bn,
    )
    model = RetinaNet(config, backbone)
    model.check_image_size(params.image_size, "detector.image_size")
    return model


def loss_config(params: DetectorParams) -> LossConfig:
    loss = params.loss
    return LossConfig(
        loss.fg_iou, loss.bg_iou, loss.alpha, loss.gamma, loss.smooth_l1_beta, params.global_weight
    )


def decode_config(params: DetectorParams) -> DecodeConfig:
    return DecodeConfig(**params.decode.model_dump())
