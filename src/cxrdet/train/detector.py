"""Detector recipes on the one loop: the detection Tasks, anchors, fold training, scoring.

`train_detector` trains one detector of either family (RetinaNet, two-stage) through
`cxrdet.train.loop.fit` (validation by the RSNA score each epoch, best checkpoint,
resume); `tune_anchors` (RetinaNet) and `train_detector@fold` (every family) use it. Scores are computed on boxes in any one pixel frame: input pixels during
training, original pixels for the stage metrics. `train_families` is what the stages
train_detector@<fold> (validated on the fold) and train_detector_final (every non-holdout
image, no validation: the last epoch kept) share.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrdet.config import AnchorParams, DetectorParams, OptimParams
from cxrdet.data.box_augment import BoxAugmentSettings, detector_augmentation
from cxrdet.data.cache import read_cached
from cxrdet.data.datasets import CachedImages, Prepared
from cxrdet.data.detection import DetectionDataset, boxes_to_input, collate_detection
from cxrdet.data.folds import HOLDOUT
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.infer.detector_tta import ORIGINAL, detection_views, predict_views, prediction_tables
from cxrdet.metrics import mean_average_precision, rsna_score
from cxrdet.models.anchors import AnchorConfig, anchors_from_base, warn_unmatchable
from cxrdet.models.families import MODEL_FILES, RETINANET, TWO_STAGE, detect
from cxrdet.models.retinanet import (
    DecodeConfig,
    LossConfig,
    RetinaNet,
    RetinaNetConfig,
    RetinaNetLoss,
    create_detector_backbone,
    pyramid_levels,
    save_detector,
)
from cxrdet.models.two_stage import TwoStageConfig, TwoStageDetector, save_two_stage
from cxrdet.train.classifier import classification_targets, file_digest
from cxrdet.runtime.distributed import unwrap
from cxrdet.train.loop import FitResult, fit
from cxrdet.runtime.session import Runtime
from cxrdet.runtime.seed import seed_everything
from cxrdet.viz import sample_grid

LogFn = Callable[[dict[str, float], int], None]
EpochFn = Callable[[int, dict[str, float]], None]
# Score thresholds swept to report the RSNA score of a model: the best one is its score.
SCORE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
OVERLAY_TRUTH, OVERLAY_PREDICTION = 1, 0  # class ids picking viz's palette colours: green, red


# ---------------------------------------------------------------- scoring


def xyxy_frame(image_ids: Sequence[Any], xyxy: np.ndarray, **columns: Any) -> pd.DataFrame:
    """image_id, x, y, w, h (+ columns) from (n, 4) xyxy boxes."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return pd.DataFrame({
        "image_id": list(image_ids), "x": xyxy[:, 0], "y": xyxy[:, 1],
        "w": xyxy[:, 2] - xyxy[:, 0], "h": xyxy[:, 3] - xyxy[:, 1], **columns,
    })


def rsna_by_threshold(
    truth: pd.DataFrame, predictions: pd.DataFrame, thresholds: Sequence[float] = SCORE_THRESHOLDS
) -> dict[float, float]:
    """The RSNA score of the predictions scoring >= t, for every t (NaN: nothing to score)."""
    return {t: rsna_score(truth, predictions[predictions["score"] >= t]).score for t in thresholds}


def best_threshold(scores: dict[float, float]) -> tuple[float, float]:
    """(threshold, score) of the best finite score; (NaN, NaN) when none is finite."""
    finite = {t: s for t, s in scores.items() if math.isfinite(s)}
    if not finite:
        return math.nan, math.nan
    threshold = max(finite, key=lambda t: (finite[t], -t))
    return threshold, finite[threshold]


def detection_scores(truth: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, float]:
    """rsna: the RSNA score at the best score threshold (rsna_threshold); map: VOC mAP at IoU 0.4
    over the box classes (class-aware, the VinBigData metric without its no-finding rule)."""
    threshold, score = best_threshold(rsna_by_threshold(truth, predictions))
    average = mean_average_precision(truth, predictions).score if len(truth) else math.nan
    return {"rsna": score, "rsna_threshold": threshold, "map": average}


def mean_box_baseline(train_boxes: pd.DataFrame, train_images: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The trivial detector: in every image of `images`, the training boxes' mean box
    (relative to the image size), score 1, class 0. Boxes and images: prepared tables."""
    sizes = train_images.set_index("image_id").loc[train_boxes["image_id"], ["width", "height"]].to_numpy(float)
    relative = train_boxes[["x", "y", "w", "h"]].to_numpy(float) / np.tile(sizes, 2)
    mean = relative.mean(axis=0)
    scale = np.tile(images[["width", "height"]].to_numpy(float), 2)
    boxes = mean * scale
    return pd.DataFrame({
        "image_id": images["image_id"].to_numpy(), "x": boxes[:, 0], "y": boxes[:, 1], "w": boxes[:, 2],
        "h": boxes[:, 3], "score": 1.0, "class_id": 0,
    })


# ---------------------------------------------------------------- the Task


class DetectionTask:
    """Loss, prediction and validation scores of a RetinaNet for `fit` (prediction and scores
    serve every family).

    `start_epoch` freezes the encoder during the first `freeze_encoder_epochs` epochs."""

    def __init__(
        self,
        criterion: RetinaNetLoss | None,
        decode_config: DecodeConfig,
        *,
        monitor: str = "rsna",
        freeze_encoder_epochs: int = 0,
        global_head: bool = True,
    ) -> None:
        self.criterion = criterion
        self.decode_config = decode_config
        self.monitor = monitor
        self.freeze_encoder_epochs = freeze_encoder_epochs
        self.global_head = global_head

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        unwrap(model).freeze_encoder(epoch < self.freeze_encoder_epochs)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        device = batch["image"].device
        outputs = model(batch["image"])
        total, _ = self.criterion(
            outputs,
            [b.to(device) for b in batch["boxes"]],
            [b.to(device) for b in batch["labels"]],
            batch["image_label"] if self.global_head else None,
        )
        return total

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        images = batch["image"]
        detections, _ = detect(unwrap(model), images, tuple(images.shape[-2:]), self.decode_config)
        return {
            "index": batch["index"].cpu(),
            "boxes": [d.boxes.cpu().numpy() for d in detections],
            "scores": [d.scores.cpu().numpy() for d in detections],
            "labels": [d.labels.cpu().numpy() for d in detections],
            "truth": [b.numpy() for b in batch["boxes"]],
            "truth_labels": [b.numpy() for b in batch["labels"]],
        }

    def score(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        index = np.concatenate([o["index"].numpy() for o in outputs])

        def frame(boxes_key: str, labels_key: str, scores_key: str | None) -> pd.DataFrame:
            boxes = [b for o in outputs for b in o[boxes_key]]
            owners = np.repeat(index, [len(b) for b in boxes])
            extra = {"class_id": np.concatenate([b for o in outputs for b in o[labels_key]]).astype(np.int64)}
            if scores_key:
                extra["score"] = np.concatenate([s for o in outputs for s in o[scores_key]]).astype(np.float64)
            return xyxy_frame(owners, np.concatenate(boxes) if boxes else np.zeros((0, 4)), **extra)

        return detection_scores(frame("truth", "truth_labels", None), frame("boxes", "labels", "scores"))


class TwoStageTask(DetectionTask):
    """The two-stage detector's loss: the sum of torchvision's RPN and box-head losses, which
    its forward pass computes from the targets (images without boxes: background only)."""

    def __init__(self, decode_config: DecodeConfig, *, monitor: str = "rsna", freeze_encoder_epochs: int = 0) -> None:
        super().__init__(None, decode_config, monitor=monitor, freeze_encoder_epochs=freeze_encoder_epochs, global_head=False)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        device = batch["image"].device
        targets = [{"boxes": b.to(device), "labels": c.to(device)} for b, c in zip(batch["boxes"], batch["labels"])]
        return sum(model(batch["image"], targets).values())


# ---------------------------------------------------------------- anchors and model


def resolve_anchors(anchors: AnchorParams, strides: Sequence[int], tuned: dict[str, Any] | None, tuned_key: str) -> AnchorConfig:
    """The tuned anchors (anchors.json content) when given, else params' detector.anchors."""
    if tuned is not None:
        config = AnchorConfig.from_dict(tuned.get("anchors", {}), key=tuned_key)
        if len(config.sizes) != len(strides):
            raise ConfigError(
                f"{tuned_key}: anchors tuned for {len(config.sizes)} levels, the detector has {len(strides)} "
                "(detector.p2 changed?); rerun tune_anchors"
            )
        return config
    if anchors.sizes is not None:
        if len(anchors.sizes) != len(strides):
            raise ConfigError(
                f"detector.anchors.sizes: {len(anchors.sizes)} sizes for {len(strides)} pyramid levels "
                f"(strides {list(strides)})"
            )
        return AnchorConfig(tuple(anchors.sizes), tuple(anchors.scales), tuple(anchors.ratios))
    return anchors_from_base(anchors.base_size, strides, anchors.scales, anchors.ratios)


def backbone_source(params: DetectorParams, pretrained_dir: Path, allow_download: bool) -> dict[str, Any]:
    """create_backbone's weight arguments for detector.weights."""
    if params.weights == "pretrain":
        path = pretrained_dir / f"{params.backbone}.pt"
        if not path.is_file():
            raise ConfigError(
                f"detector.weights: {path} not found; the pretrain stage writes it for the backbones of classifier.variants"
            )
        return {"pretrained_path": path}
    if params.weights == "imagenet":
        return {"imagenet": True, "allow_download": allow_download}
    return {}


def build_detector(
    params: DetectorParams,
    num_classes: int,
    image_classes: int,
    tuned_anchors: dict[str, Any] | None = None,
    tuned_key: str = "anchors.json",
    weights: dict[str, Any] | None = None,
) -> RetinaNet:
    backbone = create_detector_backbone(params.backbone, param_key="detector.backbone", **(weights or {}))
    _, strides = pyramid_levels(backbone.feature_info, params.p2)
    config = RetinaNetConfig(
        backbone=params.backbone, num_classes=num_classes, anchors=resolve_anchors(params.anchors, strides, tuned_anchors, tuned_key),
        image_classes=image_classes, p2=params.p2, fpn_channels=params.fpn_channels, head_convs=params.head_convs,
        head_norm=params.head_norm,
        cls_dropout=params.cls_dropout, global_dropout=params.global_dropout, frozen_bn=params.frozen_bn,
    )
    model = RetinaNet(config, backbone)
    model.check_image_size(params.image_size, "detector.image_size")
    return model


def build_two_stage(params: DetectorParams, num_classes: int, weights: dict[str, Any] | None = None) -> TwoStageDetector:
    """The two-stage detector of params' detector.two_stage on detector.backbone (same weights source)."""
    two_stage = params.two_stage
    backbone = create_detector_backbone(params.backbone, param_key="detector.backbone", **(weights or {}))
    levels, strides = pyramid_levels(backbone.feature_info, params.p2)
    rpn_strides = strides[: len(levels) + 1]  # the FPN levels and the max-pooled P6
    anchors = two_stage.anchors
    if anchors.sizes is not None and len(anchors.sizes) != len(rpn_strides):
        raise ConfigError(
            f"detector.two_stage.anchors.sizes: {len(anchors.sizes)} sizes for {len(rpn_strides)} RPN levels "
            f"(strides {list(rpn_strides)})"
        )
    config = TwoStageConfig(
        backbone=params.backbone, num_classes=num_classes, anchors=resolve_anchors(anchors, rpn_strides, None, ""),
        p2=params.p2, fpn_channels=params.fpn_channels, deformable=tuple(two_stage.deformable),
        representation=two_stage.representation, relation_heads=two_stage.relation.heads,
        geometry_dim=two_stage.relation.geometry_dim, rpn_batch_size=two_stage.rpn_batch_size,
        roi_batch_size=two_stage.roi_batch_size, proposals=two_stage.proposals, frozen_bn=params.frozen_bn,
    )
    model = TwoStageDetector(config, backbone)
    model.check_image_size(params.image_size, "detector.image_size")
    return model


@dataclass(frozen=True)
class Family:
    """What differs between the detector families on the shared loop, stage and tables."""

    family: str  # RETINANET | TWO_STAGE
    name: str  # the `model` column of its predictions (params' detector.name, detector.two_stage.name)
    optim: OptimParams
    decode: DecodeConfig
    positives_only: bool  # train on images with boxes only
    model_file: str  # in models/detector/fold<k>/


def family_settings(params: DetectorParams, family: str) -> Family:
    if family == TWO_STAGE:
        two_stage = params.two_stage
        return Family(
            TWO_STAGE, two_stage.name, two_stage.optim, DecodeConfig(**two_stage.decode.model_dump()),
            two_stage.positives_only, MODEL_FILES[TWO_STAGE],
        )
    return Family(RETINANET, params.name, params.optim, decode_config(params), False, MODEL_FILES[RETINANET])


def family_of(model: nn.Module) -> str:
    return TWO_STAGE if isinstance(model, TwoStageDetector) else RETINANET


def loss_config(params: DetectorParams) -> LossConfig:
    loss = params.loss
    return LossConfig(loss.fg_iou, loss.bg_iou, loss.alpha, loss.gamma, loss.smooth_l1_beta, params.global_weight)


def decode_config(params: DetectorParams) -> DecodeConfig:
    return DecodeConfig(**params.decode.model_dump())


def training_box_sizes(prepared: Prepared, image_ids: Sequence[str], size: int) -> np.ndarray:
    """(n, 2) widths and heights of the boxes of `image_ids`, in input pixels."""
    boxes = prepared.boxes[prepared.boxes["image_id"].isin(image_ids)]
    scaled = boxes_to_input(boxes, prepared.images, size)
    return np.stack([scaled["x1"] - scaled["x0"], scaled["y1"] - scaled["y0"]], axis=1)


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class DetectorData:
    """What a detector trains on: box classes and the global head's image classes."""

    class_names: list[str]  # box classes
    image_class_names: list[str]  # global head outputs (empty: no head)
    positive: list[int]  # image classes whose probabilities add up to P(opacity)
    image_labels: pd.Series  # image class index by image_id (zeros without a head)


def detector_data(prepared: Prepared, params: DetectorParams) -> DetectorData:
    class_names = list(prepared.info["class_names"])
    if not class_names or prepared.boxes.empty:
        raise CxrdetError(f"{prepared.root}: no boxes to train a detector on")
    if params.global_head == "none":
        zeros = pd.Series(np.zeros(len(prepared.images), dtype=np.int64), index=prepared.images["image_id"].to_numpy())
        return DetectorData(class_names, [], [], zeros)
    targets = classification_targets(prepared, params.global_head, "detector.global_head")
    return DetectorData(class_names, targets.class_names, targets.positive, targets.labels)


def train_detector(
    model: RetinaNet | TwoStageDetector,
    params: DetectorParams,
    data: DetectorData,
    prepared: Prepared,
    train_ids: Sequence[str],
    val_ids: Sequence[str] | None,
    runtime: Runtime,
    checkpoint_dir: Path,
    *,
    identity: dict[str, Any],
    log: LogFn | None = None,
    on_epoch_end: EpochFn | None = None,
    desc: str = "detector",
    epochs: int | None = None,
) -> FitResult:
    """Train `model` (either family) on `train_ids`, validate on `val_ids` each epoch; `model`
    ends with the best epoch's weights (`val_ids` None: no validation, the last epoch's).
    `epochs` overrides the family's optim.epochs. `identity` is what a resumable checkpoint must match."""
    size = params.image_size
    settings = family_settings(params, family_of(model))
    optim = settings.optim if epochs is None else settings.optim.model_copy(update={"epochs": epochs})
    if settings.positives_only:  # 1st place: the two-stage detectors saw positive images only
        with_boxes = set(prepared.boxes["image_id"])
        train_ids = [image_id for image_id in train_ids if image_id in with_boxes]
        if not train_ids:
            raise CxrdetError("detector.two_stage.positives_only: no training image has boxes")
    augment = detector_augmentation(BoxAugmentSettings(**params.augment.model_dump(exclude={"enabled"})))
    labels = data.image_labels
    train_set = DetectionDataset(
        CachedImages(prepared, train_ids), prepared.images, prepared.boxes, labels.loc[list(train_ids)].to_numpy(),
        size, augment if params.augment.enabled else None, settings.optim.seed,
    )
    val_set = None if val_ids is None else DetectionDataset(
        CachedImages(prepared, val_ids), prepared.images, prepared.boxes, labels.loc[list(val_ids)].to_numpy(), size
    )
    if settings.family == TWO_STAGE:
        # No anchor warning: the RPN matches every box to its best anchor and the box head regresses again.
        task: DetectionTask = TwoStageTask(
            settings.decode, monitor=params.monitor, freeze_encoder_epochs=params.freeze_encoder_epochs
        )
        knobs = {
            "shared": params.model_dump(include={"backbone", "weights", "image_size", "augment", "freeze_encoder_epochs", "monitor"}),
            "positives_only": settings.positives_only,
        }
    else:
        warn_unmatchable(training_box_sizes(prepared, train_ids, size), model.config.anchors, params.loss.fg_iou)
        task = DetectionTask(
            RetinaNetLoss(model.box_coder, loss_config(params)), settings.decode,
            monitor=params.monitor, freeze_encoder_epochs=params.freeze_encoder_epochs,
            global_head=bool(data.image_class_names),
        )
        knobs = params.model_dump(exclude={"optim", "decode", "tta", "folds", "name", "families", "two_stage"})
    full_identity = {
        "recipe": "detector", "data_hash": prepared.info["data_hash"], "model": model.config.to_dict(),
        "train_ids": hashlib.sha256("\n".join(train_ids).encode()).hexdigest(), "params": knobs, **identity,
    }
    return fit(
        model, task, train_set, val_set, optim=optim, runtime=runtime.params, device=runtime.device,
        context=runtime.context, checkpoint_dir=checkpoint_dir, identity=json.loads(json.dumps(full_identity, default=str)),
        log=log, on_epoch_end=on_epoch_end, collate_fn=collate_detection, desc=desc,
    )


def weights_identity(weights: dict[str, Any]) -> dict[str, Any]:
    """What distinguishes the starting weights (a file's digest, not its path)."""
    path = weights.get("pretrained_path")
    return {"pretrained": file_digest(Path(path)) if path else None, "imagenet": bool(weights.get("imagenet"))}


def seeded_detector(params: DetectorParams, data: DetectorData, **kwargs: Any) -> RetinaNet:
    """A fresh detector, its initial weights a function of the optimisation seed."""
    seed_everything(params.optim.seed)
    return build_detector(params, len(data.class_names), len(data.image_class_names), **kwargs)


def seeded_family(
    params: DetectorParams, data: DetectorData, family: str, *, tuned_anchors: dict[str, Any] | None = None,
    tuned_key: str = "anchors.json", weights: dict[str, Any] | None = None,
) -> RetinaNet | TwoStageDetector:
    """A fresh detector of `family`; the tuned anchors are the RetinaNet's (the RPN has its own)."""
    if family == TWO_STAGE:
        seed_everything(params.two_stage.optim.seed)
        return build_two_stage(params, len(data.class_names), weights)
    return seeded_detector(params, data, tuned_anchors=tuned_anchors, tuned_key=tuned_key, weights=weights)


# ---------------------------------------------------------------- predictions and their scores


def predict_detector(
    model: RetinaNet | TwoStageDetector,
    params: DetectorParams,
    data: DetectorData,
    prepared: Prepared,
    image_ids: Sequence[str],
    runtime: Runtime,
    fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(boxes, images) prediction tables (cxrdet.infer.detector_tta) over every TTA view; the
    `model` column is the family's name (the two-stage has no global head: no p_ columns)."""
    settings = family_settings(params, family_of(model))
    views = detection_views(params.tta.hflip, params.tta.scales)
    predictions = predict_views(
        model, CachedImages(prepared, image_ids), size=params.image_size, views=views,
        decode_config=settings.decode, batch_size=params.tta.batch_size, device=runtime.device,
        runtime=runtime.params, context=runtime.context,
    )
    has_head = settings.family == RETINANET
    return prediction_tables(
        predictions, image_ids, prepared.images, params.image_size, fold=fold, model=settings.name,
        image_classes=data.image_class_names if has_head else (), positive=data.positive if has_head else (),
    )



def truth_boxes(prepared: Prepared, image_ids: Sequence[str]) -> pd.DataFrame:
    """The prepared boxes of `image_ids` (original pixels)."""
    return prepared.boxes[prepared.boxes["image_id"].isin(image_ids)].reset_index(drop=True)


def view_rsna(
    truth: pd.DataFrame, boxes: pd.DataFrame, view: str = ORIGINAL, threshold: float | None = None
) -> tuple[float, float]:
    """(score, threshold) of one view's boxes: at `threshold`, or at the best of SCORE_THRESHOLDS."""
    chosen = boxes[boxes["view"] == view]
    if threshold is None:
        return best_threshold(rsna_by_threshold(truth, chosen))[::-1]
    return rsna_score(truth, chosen[chosen["score"] >= threshold]).score, threshold


# ---------------------------------------------------------------- every family of a stage


@dataclass(frozen=True)
class TrainedFamily:
    """One family after `train_families`: its trained model, its model file's config, the fit and
    its prediction tables by part (boxes, images: the cxrdet.infer.detector_tta contract)."""

    settings: Family
    model: RetinaNet | TwoStageDetector
    config: dict[str, Any]
    result: FitResult
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame]]


def train_families(
    params: DetectorParams,
    data: DetectorData,
    prepared: Prepared,
    ids: Mapping[str, Sequence[str]],
    runtime: Runtime,
    *,
    fold: int,
    validate: str | None,
    predict: Sequence[str],
    model_dir: Path,
    checkpoint_dir: Path,
    weights: dict[str, Any],
    tuned_anchors: dict[str, Any] | None = None,
    tuned_key: str = "anchors.json",
    epochs: Mapping[str, int] | None = None,
    family_run: Callable[[Family], AbstractContextManager[Any]] = lambda _: nullcontext(),
    log: LogFn | None = None,
    desc: str = "",
) -> Iterator[TrainedFamily]:
    """Every family of params' detector.families, one after the other, through the one loop: a
    fresh seeded model trained on ids["train"], validated on ids[validate] every epoch (best epoch
    kept; `validate` None: no validation, the last epoch kept; `epochs`: family -> epochs override),
    resumable from checkpoint_dir/<name>; then its TTA prediction tables of the `predict` parts
    (their `fold` column: `fold`) and, on the main process, its model file
    model_dir/<family's model file> (config: fold, name, family, image size, classes, decode,
    epochs, best epoch when validated). Each family runs inside `family_run(settings)` (e.g. a
    nested MLflow run) and is yielded there on the main process, so what the caller logs goes to
    it; other DDP ranks train and predict only."""
    for family in params.families:
        settings = family_settings(params, family)
        with family_run(settings):
            model = seeded_family(params, data, family, tuned_anchors=tuned_anchors, tuned_key=tuned_key, weights=weights)
            result = train_detector(
                model, params, data, prepared, ids["train"], None if validate is None else ids[validate], runtime,
                checkpoint_dir / settings.name, identity={"fold": fold, "weights": weights_identity(weights)},
                log=log, desc=f"{settings.name} {desc}".strip(), epochs=(epochs or {}).get(family),
            )
            tables = {part: predict_detector(model, params, data, prepared, ids[part], runtime, fold) for part in predict}
            if not runtime.context.is_main:
                continue
            head = settings.family == RETINANET
            config = {
                "fold": fold, "name": settings.name, "family": family, "image_size": params.image_size,
                "class_names": data.class_names, "positive": data.positive if head else [],
                "image_class_names": data.image_class_names if head else [],
                "decode": settings.decode.__dict__, "epochs": result.epochs,
            }
            if validate is not None:
                config |= {"best_epoch": result.best_epoch, f"best_val_{params.monitor}": result.best_score}
            save = save_detector if head else save_two_stage
            save(model_dir / settings.model_file, model, config)
            yield TrainedFamily(settings, model, config, result, tables)


def final_epochs(optim: OptimParams, best_epochs: Sequence[int], epochs: int | None = None) -> int:
    """Epochs of a family's final training (params' detector_final.epochs, which says why): `epochs`
    when given; else the folds' mean best epoch, rounded up, when their optimisation followed the
    validation score (optim.patience > 0 or a plateau schedule), else optim.epochs. Best epochs of 0
    (no finite validation score) do not count; none left: optim.epochs."""
    if epochs is not None:
        return epochs
    found = [epoch for epoch in best_epochs if epoch > 0]
    if not found or not (optim.patience > 0 or optim.schedule.name == "plateau"):
        return optim.epochs
    return math.ceil(sum(found) / len(found))


def fold_best_epochs(folds_dir: Path, folds: Sequence[int], name: str) -> list[int]:
    """The best epoch of the model `name` (a family's) of every fold, from the fold stages'
    metrics.json (results/detector/folds/fold<k>/metrics.json: "models" -> name -> best_epoch)."""
    found = []
    for fold in folds:
        path = Path(folds_dir) / f"fold{fold}" / "metrics.json"
        if not path.is_file():
            raise CxrdetError(f"{path}: not found; run `dvc repro train_detector` first")
        models = json.loads(path.read_text()).get("models", {})
        if name not in models or "best_epoch" not in models[name]:
            raise CxrdetError(f"{path}: no best epoch of {name!r}; rerun `dvc repro train_detector@{fold}`")
        found.append(int(models[name]["best_epoch"]))
    return found


# ---------------------------------------------------------------- the folds together


@dataclass(frozen=True)
class FoldsReport:
    metrics: dict[str, Any]
    threshold: float  # the out-of-fold best score threshold (original view)
    best_fold: int  # the fold model with the best out-of-fold score


def folds_report(
    prepared: Prepared, split: pd.DataFrame, oof: dict[int, pd.DataFrame], holdout: dict[int, pd.DataFrame]
) -> FoldsReport:
    """Out-of-fold and holdout RSNA scores of fold models' box tables (by fold), and the
    mean-box baseline's; the out-of-fold mAP at IoU 0.4 (VinBigData's metric without its
    no-finding rule). The threshold is chosen on the out-of-fold original view only."""
    folds = sorted(oof)
    oof_ids = split.loc[split["fold"].isin(folds), "image_id"].tolist()
    holdout_ids = split.loc[split["fold"] == HOLDOUT, "image_id"].tolist()
    oof_truth, holdout_truth = truth_boxes(prepared, oof_ids), truth_boxes(prepared, holdout_ids)
    every = pd.concat(oof.values(), ignore_index=True)
    score, threshold = view_rsna(oof_truth, every)
    per_fold = {
        f"fold{k}": {
            "oof_rsna_score": view_rsna(truth_boxes(prepared, split.loc[split["fold"] == k, "image_id"]), oof[k], threshold=threshold)[0],
            "holdout_rsna_score": view_rsna(holdout_truth, holdout[k], threshold=threshold)[0],
        }
        for k in folds
    }
    trained_on = prepared.boxes[prepared.boxes["image_id"].isin(oof_ids)]
    baseline = {
        f"{part}_rsna_score": rsna_score(truth, mean_box_baseline(trained_on, prepared.images, prepared.images[prepared.images["image_id"].isin(ids)])).score
        for part, truth, ids in (("oof", oof_truth, oof_ids), ("holdout", holdout_truth, holdout_ids))
    }
    metrics = {
        "oof_rsna_score": score,
        "oof_rsna_threshold": threshold,
        "oof_map": mean_average_precision(oof_truth, every[every["view"] == ORIGINAL]).score,
        "holdout_rsna_score": float(np.mean([f["holdout_rsna_score"] for f in per_fold.values()])),
        "oof_rsna_score_by_view": {view: view_rsna(oof_truth, every, view)[0] for view in sorted(every["view"].unique())},
        "folds": per_fold,
        "baseline": {"method": "the training boxes' mean box in every image", **baseline},
        "n_oof": len(oof_ids),
        "n_holdout": len(holdout_ids),
    }
    best_fold = max(folds, key=lambda k: _finite_or_low(per_fold[f"fold{k}"]["oof_rsna_score"]))
    return FoldsReport(metrics, threshold, best_fold)


def _finite_or_low(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def draw_overlay(
    prepared: Prepared, image_ids: Sequence[str], predicted: pd.DataFrame, threshold: float, path: Path, title: str, count: int = 12
) -> None:
    """A PNG grid of cached images (those with boxes first): truth boxes green, the original
    view's predictions scoring >= threshold red with their scores."""
    truth = truth_boxes(prepared, image_ids)
    images = prepared.images.set_index("image_id")
    positive = set(truth["image_id"])
    shown = predicted[(predicted["view"] == ORIGINAL) & (predicted["score"] >= threshold)]
    items = []
    for image_id in sorted(image_ids, key=lambda i: (i not in positive, i))[:count]:
        row = images.loc[image_id]
        drawn = pd.concat([
            truth[truth["image_id"] == image_id][["x", "y", "w", "h"]].assign(class_id=OVERLAY_TRUTH, class_name="truth"),
            shown[shown["image_id"] == image_id][["x", "y", "w", "h", "score"]].assign(class_id=OVERLAY_PREDICTION, class_name=""),
        ], ignore_index=True)
        drawn[["x", "w"]] *= row["scale_x"]
        drawn[["y", "h"]] *= row["scale_y"]
        items.append((read_cached(prepared.root / row["cache_path"]), drawn, f"{image_id[:12]} {title}"))
    sample_grid(items, path)
