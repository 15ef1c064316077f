"""The second detector family: Faster R-CNN on a one-channel timm backbone + FPN, with
modulated deformable convolutions in chosen backbone stages and an optional
object-relation module in the box head (the RSNA 1st place's Deformable R-FCN /
Relation Networks, in modern form).

Built from torchvision's Faster R-CNN parts: FeaturePyramidNetwork with a max-pooled P6,
RPNHead + RegionProposalNetwork, MultiScaleRoIAlign, TwoMLPHead's layers, RoIHeads'
sampling, loss and post-processing, FastRCNNPredictor. Written here is only what they
lack: the backbone plumbing shared with the RetinaNet (timm features, true strides,
anchors centred on their cells), a box branch that hands the box head its RoIs (the
relation module needs them), and no GeneralizedRCNNTransform: inputs arrive normalised
at their final size, as every cxrdet model's do, so TTA scales stay as the views made them.

forward(images, targets) returns torchvision's loss dict in training mode and its
detections in eval mode; `detect` gives the RetinaNet's Detections (0-based classes).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cxrdet.config import DetectorParams
from cxrdet.errors import ConfigError
from cxrdet.models.anchors import AnchorConfig, StridedAnchorGenerator, resolve_anchors
from cxrdet.models.deformable import make_deformable
from cxrdet.models.relation import ObjectRelation
from cxrdet.models.retinanet import (
    DecodeConfig,
    Detections,
    create_detector_backbone,
    load_detector_file,
    pyramid_levels,
    save_detector_file,
)

TWO_STAGE_KIND = "two_stage"
ROI_SIZE = 7  # RoIAlign output side (Faster R-CNN's)
RELATION_KEY = "detector.two_stage.relation"
DEFORMABLE_KEY = "detector.two_stage.deformable"


@dataclass(frozen=True)
class TwoStageConfig:
    """Everything that rebuilds the network (saved with its weights)."""

    backbone: str
    num_classes: int  # box classes, background not counted
    anchors: AnchorConfig  # one base size per RPN level: P2|P3 .. P6
    p2: bool = True  # FPN from C2 (stride 4) rather than C3
    fpn_channels: int = 256
    deformable: tuple[int, ...] = (5,)  # backbone stages C<k> whose 3x3 convs are deformable
    representation: int = 1024  # box-head fc width
    relation_heads: int = 0  # 0: no relation module
    geometry_dim: int = 64
    rpn_batch_size: int = 256
    roi_batch_size: int = 512
    proposals: int = 1000
    frozen_bn: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "anchors": self.anchors.to_dict(),
            "deformable": list(self.deformable),
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> TwoStageConfig:
        return cls(
            **{
                **content,
                "anchors": AnchorConfig.from_dict(content["anchors"]),
                "deformable": tuple(content["deformable"]),
            }
        )


class FpnBody(nn.Module):
    """timm feature maps + torchvision's FPN over C2|C3..C5 and a max-pooled P6 (for the RPN only),
    as torchvision's two-stage detectors take it: forward -> OrderedDict, `out_channels`."""

    def __init__(self, backbone: nn.Module, p2: bool, width: int) -> None:
        super().__init__()
        self.body = backbone
        self.levels, strides = pyramid_levels(backbone.feature_info, p2)
        self.strides = strides[: len(self.levels) + 1]  # P6 = P5 max-pooled by 2
        channels = [int(backbone.feature_info.channels()[i]) for i in self.levels]
        self.fpn = FeaturePyramidNetwork(channels, width, extra_blocks=LastLevelMaxPool())
        self.out_channels = width
        self.encoder_frozen = False

    @property
    def names(self) -> list[str]:
        """The FPN levels that RoIs are pooled from (not the pooled P6)."""
        return [f"c{i}" for i in self.levels]

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            features = self.body(images)
        return self.fpn(OrderedDict((f"c{i}", features[i]) for i in self.levels))


class BoxHead(TwoMLPHead):
    """TwoMLPHead (fc6, fc7, ReLU) with an object-relation module after each fc layer when
    `relation_heads` > 0 (Relation Networks' 2fc + 2 RM head); takes the RoIs too."""

    def __init__(
        self, in_channels: int, representation: int, relation_heads: int, geometry_dim: int
    ) -> None:
        super().__init__(in_channels, representation)
        self.relations = (
            nn.ModuleList(
                ObjectRelation(representation, relation_heads, geometry_dim, RELATION_KEY)
                for _ in range(2)
            )
            if relation_heads
            else None
        )

    def forward(self, x: Tensor, proposals: list[Tensor] | None = None) -> Tensor:  # type: ignore[override]
        x = x.flatten(start_dim=1)
        for number, fc in enumerate((self.fc6, self.fc7)):
            x = F.relu(fc(x))
            if self.relations is not None and proposals is not None:
                x = self.relations[number].over_images(
                    x, torch.cat(proposals), [len(p) for p in proposals]
                )
        return x


class BoxRoIHeads(RoIHeads):
    """torchvision's RoIHeads, box branch only, passing the RoIs to the box head (its forward
    hands the head pooled features alone). Sampling, loss and post-processing are RoIHeads'."""

    def forward(  # type: ignore[override]
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled, proposals))
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets
            )
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        boxes, scores, classes = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        return [
            {"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, classes)
        ], {}


class TwoStageDetector(nn.Module):
    """Input (N, 1, H, W) normalised images. Training mode: forward(images, targets) -> losses
    (targets: [{"boxes": (n, 4) xyxy input pixels, "labels": (n,) 0-based box classes}]).
    Eval mode: forward(images) -> torchvision detections; `detect` -> Detections."""

    def __init__(self, config: TwoStageConfig, backbone: nn.Module) -> None:
        """`backbone`: a timm `features_only` model (see `create_detector_backbone`)."""
        super().__init__()
        self.config = config
        backbone = freeze_batch_norm_2d(backbone) if config.frozen_bn else backbone
        make_deformable(backbone, config.deformable, config.backbone, DEFORMABLE_KEY)
        self.body = FpnBody(backbone, config.p2, config.fpn_channels)
        anchors = StridedAnchorGenerator(config.anchors, self.body.strides)
        width = config.fpn_channels
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(width, config.anchors.per_location),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=config.rpn_batch_size,
            positive_fraction=0.5,
            pre_nms_top_n={"training": config.proposals, "testing": config.proposals},
            post_nms_top_n={"training": config.proposals, "testing": config.proposals},
            nms_thresh=0.7,
        )
        self.roi_heads = BoxRoIHeads(
            MultiScaleRoIAlign(self.body.names, output_size=ROI_SIZE, sampling_ratio=2),
            BoxHead(
                width * ROI_SIZE**2,
                config.representation,
                config.relation_heads,
                config.geometry_dim,
            ),
            FastRCNNPredictor(config.representation, config.num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=config.roi_batch_size,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=0.05,
            nms_thresh=0.5,
            detections_per_img=100,
        )

    @property
    def max_stride(self) -> int:
        """P6's stride: training inputs are multiples of it, so every level tiles the image
        exactly."""
        return self.body.strides[-1]

    @property
    def pad_multiple(self) -> int:
        """The backbone's last stride: TTA views are padded to a multiple of it (P6 rounds up)."""
        return self.body.strides[-2]

    def check_image_size(self, size: int, key: str) -> None:
        """ConfigError naming `key` unless `size` is a multiple of the largest stride (P6)."""
        if size % self.max_stride:
            raise ConfigError(
                f"{key}: {size} is not a multiple of the two-stage detector's largest stride "
                f"{self.max_stride} (P6 of {self.config.backbone!r})"
            )

    def freeze_encoder(self, frozen: bool) -> None:
        """A frozen encoder gets no gradients and keeps its batch-norm statistics (eval mode)."""
        self.body.encoder_frozen = frozen
        self.body.body.train(self.training and not frozen)

    def train(self, mode: bool = True) -> TwoStageDetector:
        super().train(mode)
        self.body.body.train(mode and not self.body.encoder_frozen)
        return self

    def forward(
        self,
        images: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """`image_size`: the content of padded inputs (boxes are clipped to it); default the input
        size."""
        size = image_size or (int(images.shape[-2]), int(images.shape[-1]))
        image_list = ImageList(images, [size] * len(images))
        if targets is not None:  # torchvision's heads count class 0 as background
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        features = self.body(images)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        detections, box_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets
        )
        return {**rpn_losses, **box_losses} if self.training else detections

    def detect(
        self, images: Tensor, image_size: tuple[int, int], config: DecodeConfig
    ) -> tuple[list[Detections], None]:
        """Per image: boxes scoring above the floor after class-wise NMS, best `top_k`
        (decode settings go to the RoI heads' post-processing; `candidates` is the RPN's
        `proposals`); no global head, so no image-class probabilities."""
        heads = self.roi_heads
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = (
            config.score_floor,
            config.nms_iou,
            config.top_k,
        )
        found = self(images, image_size=image_size)
        return [Detections(d["boxes"], d["scores"], d["labels"] - 1) for d in found], None


def save_two_stage(path: Path, model: TwoStageDetector, extra: dict[str, Any]) -> None:
    save_detector_file(path, TWO_STAGE_KIND, model, extra)


def load_two_stage(path: Path) -> tuple[TwoStageDetector, dict[str, Any]]:
    return load_detector_file(path, TWO_STAGE_KIND, TwoStageDetector, TwoStageConfig)


def build_two_stage(
    params: DetectorParams, num_classes: int, weights: dict[str, Any] | None = None
) -> TwoStageDetector:
    """The two-stage detector of params' detector.two_stage on detector.backbone (same weights
    source)."""
    two_stage = params.two_stage
    backbone = create_detector_backbone(
        params.backbone, param_key="detector.backbone", **(weights or {})
    )
    levels, strides = pyramid_levels(backbone.feature_info, params.p2)
    rpn_strides = strides[: len(levels) + 1]  # the FPN levels and the max-pooled P6
    anchors = two_stage.anchors
    if anchors.sizes is not None and len(anchors.sizes) != len(rpn_strides):
        raise ConfigError(
            f"detector.two_stage.anchors.sizes: {len(anchors.sizes)} sizes for "
            f"{len(rpn_strides)} RPN levels (strides {list(rpn_strides)})"
        )
    config = TwoStageConfig(
        backbone=params.backbone,
        num_classes=num_classes,
        anchors=resolve_anchors(anchors, rpn_strides, None, ""),
        p2=params.p2,
        fpn_channels=params.fpn_channels,
        deformable=tuple(two_stage.deformable),
        representation=two_stage.representation,
        relation_heads=two_stage.relation.heads,
        geometry_dim=two_stage.relation.geometry_dim,
        rpn_batch_size=two_stage.rpn_batch_size,
        roi_batch_size=two_stage.roi_batch_size,
        proposals=two_stage.proposals,
        frozen_bn=params.frozen_bn,
    )
    model = TwoStageDetector(config, backbone)
    model.check_image_size(params.image_size, "detector.image_size")
    return model
