"""Params of the RetinaNet recipe: detector folds and the anchor search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, model_validator

from cxrdet.config.section import Section
from cxrdet.config.training import OptimParams
from cxrdet.config.tuning import CountRange, PrunerParams, SearchRange, StudyParams


class AnchorParams(Section):
    """Anchors per pyramid level: base size x scales x ratios (height / width)."""

    base_size: float = Field(
        4.0, gt=0.0
    )  # a level's base size = base_size x its stride (reference: 4: P3 32 px)
    sizes: list[PositiveFloat] | None = (
        None  # explicit base size per level, finest first; overrides base_size
    )
    scales: list[PositiveFloat] = Field(
        [1.0, 1.26, 1.587], min_length=1
    )  # reference: 1, 2^(1/3), 2^(2/3)
    ratios: list[PositiveFloat] = Field([0.5, 1.0, 2.0], min_length=1)


class DetectorLossParams(Section):
    fg_iou: float = Field(0.5, gt=0.0, le=1.0)  # anchors at or above: positives
    bg_iou: float = Field(0.4, gt=0.0, le=1.0)  # anchors below: negatives; in between: ignored
    alpha: float = Field(0.25, ge=0.0, le=1.0)  # focal loss
    gamma: float = Field(2.0, ge=0.0)
    smooth_l1_beta: float = Field(1 / 9, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> DetectorLossParams:
        if self.bg_iou > self.fg_iou:
            raise ValueError(f"bg_iou ({self.bg_iou}) must not exceed fg_iou ({self.fg_iou})")
        return self


class BoxAugmentParams(Section):
    """Training augmentation of the detector (2nd place), boxes following the 8-point rule."""

    enabled: bool = True
    shift: float = Field(0.0625, ge=0.0, lt=0.5)  # fraction of the side (2nd place: +-32 px at 512)
    scale_sigma: float = Field(0.15, ge=0.0)  # scale = 2^N(0, this)
    rotate_sigma: float = Field(6.0, ge=0.0)  # degrees
    shear_sigma: float = Field(4.0, ge=0.0)  # degrees
    hflip: float = Field(0.5, ge=0.0, le=1.0)  # probability
    blur: float = Field(0.1, ge=0.0, le=1.0)  # probability
    noise: float = Field(0.1, ge=0.0, le=1.0)  # probability
    gamma: float = Field(0.25, ge=0.0, le=1.0)  # gamma = 2^U(-this, this); 0: off


class DecodeParams(Section):
    """Raw detections kept per image and view (the ensemble stage filters further)."""

    score_floor: float = Field(0.01, ge=0.0, lt=1.0)
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    top_k: int = Field(20, ge=1)
    candidates: int = Field(1000, ge=1)


class DetectorTtaParams(Section):
    hflip: bool = True  # the flipped copy of every scale
    scales: list[PositiveFloat] = Field([0.8, 1.0, 1.2], min_length=1)  # 1.0 is the original view
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _has_original(self) -> DetectorTtaParams:
        if 1.0 not in self.scales:
            raise ValueError(f"scales must include 1.0, the original view (got {self.scales})")
        return self


class RelationParams(Section):
    """Relation Networks' object-relation module after each fc layer of the two-stage box head."""

    heads: int = Field(
        0, ge=0
    )  # 0: off; Relation Networks: 16 (they must divide two_stage.representation)
    geometry_dim: int = Field(
        64, ge=8, multiple_of=8
    )  # the relative-geometry embedding (4 features x sin/cos)


class TwoStageDecodeParams(Section):
    """Boxes the two-stage detector keeps per image and view (its RoI heads' post-processing)."""

    score_floor: float = Field(0.01, ge=0.0, lt=1.0)
    nms_iou: float = Field(0.3, gt=0.0, le=1.0)  # 1st place: 0.3
    top_k: int = Field(5, ge=1)  # 1st place: at most 5 boxes


class TwoStageParams(Section):
    """The second detector family (families: [.., two_stage]): a Faster R-CNN on the same timm
    backbone, FPN (detector.p2, fpn_channels), image size, augmentation and TTA as the RetinaNet,
    with modulated deformable convolutions and an optional relation module (RSNA 1st place:
    Deformable R-FCN / Relation Networks on ResNet-101)."""

    name: str = Field(
        "two_stage", pattern=r"^[A-Za-z0-9_.-]+$"
    )  # the `model` column of its predictions
    # Backbone stages C<k> (stride 2^k) whose 3x3 convs become deformable; 1st place: res5 = [5];
    # [] off.
    deformable: list[int] = Field([5], max_length=8)
    representation: int = Field(1024, ge=8)  # width of the box head's two fc layers
    relation: RelationParams = RelationParams()
    positives_only: bool = (
        True  # train on images with boxes only (1st place); validation sees every image
    )
    anchors: AnchorParams = AnchorParams(
        base_size=8.0, scales=[1.0]
    )  # one size per level P2|P3..P6 (FPN: 32 px at P2)
    rpn_batch_size: int = Field(256, ge=1)  # anchors sampled per image for the RPN loss
    roi_batch_size: int = Field(512, ge=1)  # RoIs sampled per image for the box-head loss
    proposals: int = Field(
        1000, ge=1
    )  # RPN proposals per image (after its NMS), training and inference
    optim: OptimParams = OptimParams()
    decode: TwoStageDecodeParams = TwoStageDecodeParams()

    @model_validator(mode="after")
    def _consistent(self) -> TwoStageParams:
        if len(set(self.deformable)) != len(self.deformable):
            raise ValueError(f"deformable: stages must be unique (got {self.deformable})")
        heads = self.relation.heads
        if heads and self.representation % heads:
            raise ValueError(
                f"relation.heads: {heads} heads do not divide representation "
                f"({self.representation}): each head attends with representation / heads channels"
            )
        return self


class DetectorParams(Section):
    """Fold detectors (DVC stage train_detector@<fold>: every family of `families`) and their TTA
    predictions; the top-level knobs are the RetinaNet's, and the backbone, FPN, image size,
    augmentation and TTA are shared."""

    name: str = Field(
        "retinanet", pattern=r"^[A-Za-z0-9_.-]+$"
    )  # the `model` column of the predictions
    folds: list[int] = Field([0, 1, 2, 3], min_length=1)
    backbone: str = Field(
        "resnet10t", min_length=1
    )  # any timm name; one input channel; features_only
    # none: random init; pretrain: models/pretrained/<backbone>.pt of the pretrain stage (the
    # backbone must be one of classifier.variants'); imagenet: timm's weights (a download:
    # pretrain.allow_download).
    weights: Literal["none", "pretrain", "imagenet"] = "none"
    image_size: int = Field(128, ge=32, le=2048)  # a multiple of the largest stride (P7)
    p2: bool = True  # FPN level P2 (stride 4) for small boxes (2nd place)
    fpn_channels: int = Field(256, ge=8)
    head_convs: int = Field(4, ge=0)
    head_norm: bool = False  # GroupNorm in the heads (torchvision's RetinaNet v2): converges faster
    cls_dropout: float = Field(
        0.5, ge=0.0, lt=1.0
    )  # before the anchor-classification conv (2nd place 0.5-0.75)
    # The global image head on the last backbone level: label = the image labels (RSNA: 3),
    # opacity = boxes or not (normal / abnormal), none = no head.
    global_head: Literal["label", "opacity", "none"] = "label"
    global_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    global_weight: float = Field(0.1, ge=0.0)  # 2nd place: 0.1
    frozen_bn: bool = False  # 2nd place: frozen (needs loaded weights)
    freeze_encoder_epochs: int = Field(0, ge=0)  # 2nd place: the encoder frozen during epoch 0
    # The validation score that picks the best epoch and that tune_anchors maximises:
    # rsna (RSNA score at the best score threshold) | map (VOC mAP at IoU 0.4 over box classes).
    monitor: Literal["rsna", "map"] = "rsna"
    anchors: AnchorParams = AnchorParams()
    loss: DetectorLossParams = DetectorLossParams()
    augment: BoxAugmentParams = BoxAugmentParams()
    optim: OptimParams = OptimParams()
    decode: DecodeParams = DecodeParams()
    tta: DetectorTtaParams = DetectorTtaParams()
    # Detector families trained per fold by train_detector@<fold>; their boxes are fused by the
    # ensemble.
    families: list[Literal["retinanet", "two_stage"]] = Field(["retinanet"], min_length=1)
    two_stage: TwoStageParams = TwoStageParams()

    @model_validator(mode="after")
    def _consistent(self) -> DetectorParams:
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families must be unique (got {self.families})")
        if "two_stage" in self.families and self.two_stage.name == self.name:
            raise ValueError(
                f"two_stage.name must differ from name ({self.name!r}): "
                "it tells their predictions apart"
            )
        if self.weights == "none" and (self.frozen_bn or self.freeze_encoder_epochs):
            raise ValueError(
                "frozen_bn and freeze_encoder_epochs need loaded weights "
                "(weights: pretrain or imagenet)"
            )
        if len(set(self.folds)) != len(self.folds):
            raise ValueError(f"folds must be unique (got {self.folds})")
        return self


class DetectorFinalParams(Section):
    """Stage train_detector_final: after cross-validation, every family of detector.families trained
    once more on every non-holdout image (no validation split: the last epoch is kept). Enabled,
    evaluate, register and `cxrdet predict` use these final models instead of the fold models (one
    model per family and image: no fold fusion); tune_ensemble stays on the folds' out-of-fold
    predictions. A section of its own (not under `detector`): switching it retrains no fold."""

    enabled: bool = (
        False  # false: the stage only writes a marker and everything uses the fold models
    )
    # Epochs of every family's final training; null: per family, as its folds trained: the folds'
    # mean best epoch (rounded up) when their optimisation followed the validation score
    # (optim.patience > 0 or a plateau schedule: the epoch count they really needed; without
    # validation a plateau schedule never lowers the rate), else optim.epochs (a fixed schedule:
    # the same learning-rate curve the folds were validated on, each epoch k/(k-1) as many images).
    epochs: int | None = Field(None, ge=1)


class AnchorSearchParams(Section):
    """Optuna's search space: scales = scale_span^(k / count), k < count (span 2: one octave);
    ratios = ratio_span^t for count values of t evenly in [-1, 1]."""

    base_size: SearchRange = SearchRange(low=1.0, high=8.0)  # log scale
    scale_count: CountRange = CountRange(low=1, high=3)
    scale_span: SearchRange = SearchRange(low=1.0, high=2.0)
    ratio_count: CountRange = CountRange(low=1, high=3)
    ratio_span: SearchRange = SearchRange(low=1.0, high=3.0)


class TuneAnchorsParams(Section):
    """Stage tune_anchors: anchors by short proxy trainings on one fold, pruned early."""

    enabled: bool = True  # false: train_detector uses detector.anchors as they are
    trials: int = Field(6, ge=1)
    fold: int = Field(0, ge=0)  # validation fold of the proxy trainings
    epochs: int = Field(2, ge=1)  # per proxy training
    subset: int = Field(
        0, ge=0
    )  # training images per proxy training; 0: all of the fold's training images
    # Validation images per proxy training: whole patients drawn with study.seed, so a patient's
    # images stay together; 0: all of the fold's.
    val_subset: int = Field(0, ge=0)
    # Bound on the search: its worst case (every trial runs all its epochs), in image passes, at
    # most this fraction of one fold's training; trials beyond it are not run. null: no bound.
    budget_fraction: float | None = Field(0.2, gt=0.0)
    min_bpr: float = Field(
        0.95, ge=0.0, le=1.0
    )  # prune before training below this best possible recall
    # Tuned anchors replace the configured ones (trial 0) only when they score this much more:
    # short proxy trainings are noisy.
    min_gain: float = Field(0.01, ge=0.0)
    search: AnchorSearchParams = AnchorSearchParams()
    pruner: PrunerParams = PrunerParams()
    study: StudyParams = StudyParams()
