"""Detector fold training on the one loop: the detection Tasks and fitting either family.

`train_detector` trains one detector of either family (RetinaNet, two-stage) through
`cxrdet.train.loop.fit` (validation by the RSNA score each epoch, best checkpoint,
resume); `tune_anchors` (RetinaNet) and `train_detector@fold` (every family) use it.
Scores are computed on boxes in input pixels during training (cxrdet.metrics.detection).
`train_families` is what the stages train_detector@<fold> (validated on the fold) and
train_detector_final (every non-holdout image, no validation: the last epoch kept) share.
Builders sit beside their models (cxrdet.models.retinanet, cxrdet.models.two_stage).
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

from cxrdet.config import DetectorParams, OptimParams
from cxrdet.data.box_augment import BoxAugmentSettings, detector_augmentation
from cxrdet.data.datasets import CachedImages, Prepared
from cxrdet.data.detection import DetectionDataset, boxes_to_input, collate_detection
from cxrdet.errors import CxrdetError
from cxrdet.infer.detector_tta import detection_views, predict_views, prediction_tables
from cxrdet.metrics.detection import detection_scores
from cxrdet.metrics.iou import xyxy_frame
from cxrdet.models.anchors import warn_unmatchable
from cxrdet.models.families import MODEL_FILES, RETINANET, TWO_STAGE, detect
from cxrdet.models.retinanet import (
    DecodeConfig,
    RetinaNet,
    RetinaNetLoss,
    build_retinanet,
    decode_config,
    loss_config,
    save_detector,
)
from cxrdet.models.two_stage import TwoStageDetector, build_two_stage, save_two_stage
from cxrdet.runtime.distributed import unwrap
from cxrdet.runtime.seed import seed_everything
from cxrdet.runtime.session import Runtime
from cxrdet.train.classifier import classification_targets, file_digest
from cxrdet.train.loop import FitResult, fit

LogFn = Callable[[dict[str, float], int], None]
EpochFn = Callable[[int, dict[str, float]], None]


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


# ---------------------------------------------------------------- the families


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
    return build_retinanet(params, len(data.class_names), len(data.image_class_names), **kwargs)


def seeded_family(
    params: DetectorParams, data: DetectorData, family: str, *, tuned_anchors: dict[str, Any] | None = None,
    tuned_key: str = "anchors.json", weights: dict[str, Any] | None = None,
) -> RetinaNet | TwoStageDetector:
    """A fresh detector of `family`; the tuned anchors are the RetinaNet's (the RPN has its own)."""
    if family == TWO_STAGE:
        seed_everything(params.two_stage.optim.seed)
        return build_two_stage(params, len(data.class_names), weights)
    return seeded_detector(params, data, tuned_anchors=tuned_anchors, tuned_key=tuned_key, weights=weights)


# ---------------------------------------------------------------- predictions


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


# ---------------------------------------------------------------- the final models' epochs
