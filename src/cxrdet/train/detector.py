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
from torch import nn

from cxrdet.config import DetectorParams, OptimParams
from cxrdet.data.box_augment import BoxAugmentSettings, detector_augmentation
from cxrdet.data.datasets import CachedImages, Prepared
from cxrdet.data.detection import DetectionDataset, boxes_to_input, collate_detection
from cxrdet.errors import CxrdetError
from cxrdet.families import FamilySettings, family_of, get_family
from cxrdet.infer.detector_tta import detection_views, predict_views, prediction_tables
from cxrdet.runtime.seed import seed_everything
from cxrdet.runtime.session import Runtime
from cxrdet.train.classifier import classification_targets, file_digest
from cxrdet.train.loop import FitResult, fit

LogFn = Callable[[dict[str, float], int], None]
EpochFn = Callable[[int, dict[str, float]], None]


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
        zeros = pd.Series(
            np.zeros(len(prepared.images), dtype=np.int64),
            index=prepared.images["image_id"].to_numpy(),
        )
        return DetectorData(class_names, [], [], zeros)
    targets = classification_targets(prepared, params.global_head, "detector.global_head")
    return DetectorData(class_names, targets.class_names, targets.positive, targets.labels)


def train_detector(
    model: nn.Module,
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
    `epochs` overrides the family's optim.epochs. `identity` is what a resumable checkpoint must
    match."""
    size = params.image_size
    record = family_of(model)
    settings = record.settings(params)
    optim = (
        settings.optim if epochs is None else settings.optim.model_copy(update={"epochs": epochs})
    )
    if settings.positives_only:  # 1st place: the two-stage detectors saw positive images only
        with_boxes = set(prepared.boxes["image_id"])
        train_ids = [image_id for image_id in train_ids if image_id in with_boxes]
        if not train_ids:
            raise CxrdetError("detector.two_stage.positives_only: no training image has boxes")
    augment = detector_augmentation(
        BoxAugmentSettings(**params.augment.model_dump(exclude={"enabled"}))
    )
    labels = data.image_labels
    train_set = DetectionDataset(
        CachedImages(prepared, train_ids),
        prepared.images,
        prepared.boxes,
        labels.loc[list(train_ids)].to_numpy(),
        size,
        augment if params.augment.enabled else None,
        settings.optim.seed,
    )
    val_set = (
        None
        if val_ids is None
        else DetectionDataset(
            CachedImages(prepared, val_ids),
            prepared.images,
            prepared.boxes,
            labels.loc[list(val_ids)].to_numpy(),
            size,
        )
    )
    task = record.task(
        model,
        params,
        settings,
        bool(data.image_class_names),
        lambda: training_box_sizes(prepared, train_ids, size),
    )
    full_identity = {
        "recipe": "detector",
        "data_hash": prepared.info["data_hash"],
        "model": model.config.to_dict(),
        "train_ids": hashlib.sha256("\n".join(train_ids).encode()).hexdigest(),
        "params": record.identity(params, settings),
        **identity,
    }
    return fit(
        model,
        task,
        train_set,
        val_set,
        optim=optim,
        runtime=runtime.params,
        device=runtime.device,
        context=runtime.context,
        checkpoint_dir=checkpoint_dir,
        identity=json.loads(json.dumps(full_identity, default=str)),
        log=log,
        on_epoch_end=on_epoch_end,
        collate_fn=collate_detection,
        desc=desc,
    )


def weights_identity(weights: dict[str, Any]) -> dict[str, Any]:
    """What distinguishes the starting weights (a file's digest, not its path)."""
    path = weights.get("pretrained_path")
    return {
        "pretrained": file_digest(Path(path)) if path else None,
        "imagenet": bool(weights.get("imagenet")),
    }


def seeded_family(
    params: DetectorParams,
    data: DetectorData,
    family: str,
    *,
    tuned_anchors: dict[str, Any] | None = None,
    tuned_key: str = "anchors.json",
    weights: dict[str, Any] | None = None,
) -> nn.Module:
    """A fresh detector of `family`, its initial weights a function of the family's optimisation
    seed; `tuned_anchors`: anchors.json content (named `tuned_key` in errors)."""
    record = get_family(family)
    seed_everything(record.settings(params).optim.seed)
    return record.build(
        params,
        len(data.class_names),
        len(data.image_class_names),
        tuned_anchors,
        tuned_key,
        weights,
    )


# ---------------------------------------------------------------- predictions


def predict_detector(
    model: nn.Module,
    params: DetectorParams,
    data: DetectorData,
    prepared: Prepared,
    image_ids: Sequence[str],
    runtime: Runtime,
    fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(boxes, images) prediction tables (cxrdet.infer.detector_tta) over every TTA view; the
    `model` column is the family's name (the two-stage has no global head: no p_ columns)."""
    record = family_of(model)
    settings = record.settings(params)
    views = detection_views(params.tta.hflip, params.tta.scales)
    predictions = predict_views(
        model,
        CachedImages(prepared, image_ids),
        size=params.image_size,
        views=views,
        decode_config=settings.decode,
        batch_size=params.tta.batch_size,
        device=runtime.device,
        runtime=runtime.params,
        context=runtime.context,
    )
    has_head = record.global_head
    return prediction_tables(
        predictions,
        image_ids,
        prepared.images,
        params.image_size,
        fold=fold,
        model=settings.name,
        image_classes=data.image_class_names if has_head else (),
        positive=data.positive if has_head else (),
    )


# ---------------------------------------------------------------- every family of a stage


@dataclass(frozen=True)
class TrainedFamily:
    """One family after `train_families`: its trained model, its model file's config, the fit and
    its prediction tables by part (boxes, images: the cxrdet.infer.detector_tta contract)."""

    settings: FamilySettings
    model: nn.Module
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
    family_run: Callable[[FamilySettings], AbstractContextManager[Any]] = lambda _: nullcontext(),
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
        record = get_family(family)
        settings = record.settings(params)
        with family_run(settings):
            model = seeded_family(
                params,
                data,
                family,
                tuned_anchors=tuned_anchors,
                tuned_key=tuned_key,
                weights=weights,
            )
            result = train_detector(
                model,
                params,
                data,
                prepared,
                ids["train"],
                None if validate is None else ids[validate],
                runtime,
                checkpoint_dir / settings.name,
                identity={"fold": fold, "weights": weights_identity(weights)},
                log=log,
                desc=f"{settings.name} {desc}".strip(),
                epochs=(epochs or {}).get(family),
            )
            tables = {
                part: predict_detector(model, params, data, prepared, ids[part], runtime, fold)
                for part in predict
            }
            if not runtime.context.is_main:
                continue
            head = record.global_head
            config = {
                "fold": fold,
                "name": settings.name,
                "family": family,
                "image_size": params.image_size,
                "class_names": data.class_names,
                "positive": data.positive if head else [],
                "image_class_names": data.image_class_names if head else [],
                "decode": settings.decode.__dict__,
                "epochs": result.epochs,
            }
            if validate is not None:
                config |= {
                    "best_epoch": result.best_epoch,
                    f"best_val_{params.monitor}": result.best_score,
                }
            record.save(model_dir / settings.model_file, model, config)
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
            raise CxrdetError(
                f"{path}: no best epoch of {name!r}; rerun `dvc repro train_detector@{fold}`"
            )
        found.append(int(models[name]["best_epoch"]))
    return found


# ---------------------------------------------------------------- the final models' epochs
