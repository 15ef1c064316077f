"""Classifier recipes on the one loop.

`pretrain_backbone`: a backbone learns NIH-style multi-label targets (14 findings +
abnormal, sigmoid outputs), validated on held-out patients. `train_fold_classifier`:
a fold classifier (2-class opacity or the image labels) starts from that backbone.
`predict_classifier_views` runs its TTA views and returns one row per (image, view).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.config import ClassifierParams, ClassifierVariant, PretrainParams
from cxrdet.data.augment import classifier_augmentation
from cxrdet.data.datasets import CachedImages, ClassificationDataset, Prepared
from cxrdet.data.folds import fold_ids, training_ids
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.infer.tta import predict_tta, tta_views, view_table
from cxrdet.models.classifier import Classifier, build_classifier
from cxrdet.runtime.seed import seed_everything
from cxrdet.runtime.session import Runtime
from cxrdet.train.loop import FitResult, fit
from cxrdet.train.tasks import MultiLabelTask, SingleLabelTask, balanced_class_weights

OPACITY_CLASSES = ["no_opacity", "opacity"]
LogFn = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class Targets:
    class_names: list[str]
    positive: list[int]  # the classes whose probabilities add up to P(opacity)
    labels: pd.Series  # class index, indexed by image_id


def classification_targets(prepared: Prepared, target: str, param_key: str) -> Targets:
    """opacity: has boxes or not. label: the dataset's image labels (RSNA: 3 classes);
    the labels that images with boxes carry count as opacity."""
    image_ids = prepared.images["image_id"].to_numpy()
    has_boxes = prepared.images["image_id"].isin(prepared.boxes["image_id"]).to_numpy()
    if not has_boxes.any() or has_boxes.all():
        raise CxrdetError(f"{prepared.root}: opacity needs images with and without boxes")
    if target == "opacity":
        return Targets(OPACITY_CLASSES, [1], pd.Series(has_boxes.astype(np.int64), index=image_ids))
    names = list(prepared.info["image_labels"])
    if len(names) < 2:
        raise ConfigError(
            f"{param_key}: target 'label' needs 2 or more image labels; {prepared.root} has {names}"
        )
    labels = (
        prepared.images["label"].map({name: k for k, name in enumerate(names)}).to_numpy(np.int64)
    )
    return Targets(
        names, sorted(set(labels[has_boxes].tolist())), pd.Series(labels, index=image_ids)
    )


def patient_split(
    images: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (train, validation), no patient on both sides."""
    # Imported here: only pretraining splits; the fold stages that import this module would
    # pay ~0.5 s of sklearn (and scipy) start-up for nothing.
    from sklearn.model_selection import GroupShuffleSplit

    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(images, groups=images["patient_id"].astype(str)))
    return np.sort(train), np.sort(val)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def pretrain_backbone(
    backbone: str,
    prepared: Prepared,
    params: PretrainParams,
    runtime: Runtime,
    checkpoint_dir: Path,
    param_key: str,
    log: LogFn | None = None,
) -> tuple[Classifier, FitResult]:
    """Train `backbone` with one sigmoid output per target of `prepared` (NIH: 15);
    `param_key` names the params key that chose the backbone, for errors."""
    names = list(prepared.info["target_names"])
    if not names:
        raise CxrdetError(
            f"{prepared.root}: no multi-label targets to pretrain on "
            "(data.pretrain.format must be nih)"
        )
    images = prepared.images
    targets = (
        prepared.targets.set_index("image_id").loc[images["image_id"], names].to_numpy(np.float32)
    )
    train, val = patient_split(images, params.val_fraction, params.optim.seed)
    seed_everything(params.optim.seed)
    model = build_classifier(
        backbone,
        len(names),
        drop_rate=params.drop_rate,
        imagenet=params.imagenet_init,
        allow_download=params.allow_download,
        param_key=param_key,
    )
    ids = images["image_id"].to_numpy()
    size = params.image_size
    train_set = ClassificationDataset(
        CachedImages(prepared, ids[train]),
        targets[train],
        size,
        classifier_augmentation(),
        params.optim.seed,
    )
    val_set = ClassificationDataset(CachedImages(prepared, ids[val]), targets[val], size)
    identity = {
        "recipe": "pretrain",
        "backbone": backbone,
        "data_hash": prepared.info["data_hash"],
        **params.model_dump(exclude={"optim", "source", "weights", "allow_download"}),
    }
    result = fit(
        model,
        MultiLabelTask(names),
        train_set,
        val_set,
        optim=params.optim,
        runtime=runtime.params,
        device=runtime.device,
        context=runtime.context,
        checkpoint_dir=checkpoint_dir,
        identity=identity,
        log=log,
        desc=f"pretrain {backbone}",
    )
    return model, result


@dataclass
class FoldClassifier:
    model: Classifier
    config: dict[str, Any]  # what rebuilds and describes the model (see save_classifier)
    result: FitResult


def train_fold_classifier(
    variant: ClassifierVariant,
    variant_key: str,
    fold: int,
    prepared: Prepared,
    split: pd.DataFrame,
    params: ClassifierParams,
    pretrained_path: Path,
    runtime: Runtime,
    checkpoint_dir: Path,
    log: LogFn | None = None,
) -> FoldClassifier:
    """Train on every fold but `fold` and the holdout; validate on `fold`."""
    if not pretrained_path.is_file():
        raise ConfigError(
            f"{variant_key}.backbone: pretrained weights {pretrained_path} "
            f"for {variant.backbone!r} not found; "
            "the `pretrain` stage writes them (see pretrain.source)"
        )
    targets = classification_targets(prepared, variant.target, f"{variant_key}.target")
    train_ids = np.asarray(training_ids(split, fold), dtype=object)
    val_ids = np.asarray(fold_ids(split, fold), dtype=object)
    train_labels = targets.labels.loc[train_ids].to_numpy()
    num_classes = len(targets.class_names)
    weights = balanced_class_weights(train_labels, num_classes) if params.class_weighted else None

    seed_everything(params.optim.seed)
    model = build_classifier(
        variant.backbone,
        num_classes,
        drop_rate=params.drop_rate,
        pretrained_path=pretrained_path,
        param_key=f"{variant_key}.backbone",
    )
    train_set = ClassificationDataset(
        CachedImages(prepared, train_ids),
        train_labels,
        variant.image_size,
        classifier_augmentation(),
        params.optim.seed,
    )
    val_set = ClassificationDataset(
        CachedImages(prepared, val_ids), targets.labels.loc[val_ids].to_numpy(), variant.image_size
    )
    identity = {
        "recipe": "classifier",
        "variant": variant.model_dump(),
        "fold": fold,
        "data_hash": prepared.info["data_hash"],
        "train_ids": hashlib.sha256("\n".join(train_ids).encode()).hexdigest(),
        "pretrained": file_digest(pretrained_path),
        "class_weighted": params.class_weighted,
        "drop_rate": params.drop_rate,
    }
    result = fit(
        model,
        SingleLabelTask(targets.positive, weights),
        train_set,
        val_set,
        optim=params.optim,
        runtime=runtime.params,
        device=runtime.device,
        context=runtime.context,
        checkpoint_dir=checkpoint_dir,
        identity=identity,
        log=log,
        desc=f"{variant.name} fold {fold}",
    )
    config = {
        "backbone": variant.backbone,
        "num_classes": num_classes,
        "drop_rate": params.drop_rate,
        "variant": variant.name,
        "fold": fold,
        "target": variant.target,
        "image_size": variant.image_size,
        "class_names": targets.class_names,
        "positive": targets.positive,
        "best_epoch": result.best_epoch,
        "best_auc": result.best_score,
    }
    return FoldClassifier(model, config, result)


def predict_classifier_views(
    trained: FoldClassifier,
    prepared: Prepared,
    image_ids: np.ndarray,
    params: ClassifierParams,
    runtime: Runtime,
) -> pd.DataFrame:
    """One row per (image, TTA view): image_id, fold, model, view, opacity (= P(opacity)),
    probs (every class, in config["class_names"] order)."""
    views = tta_views(params.tta.augmentations)
    config = trained.config
    probs = predict_tta(
        trained.model,
        CachedImages(prepared, image_ids),
        size=config["image_size"],
        views=views,
        seed=params.tta.seed,
        batch_size=params.tta.batch_size,
        device=runtime.device,
        runtime=runtime.params,
        context=runtime.context,
    )
    return view_table(probs, image_ids, config, [view.name for view in views])


def pretrain_summary(result: FitResult) -> dict[str, Any]:
    """The best epoch's validation AUCs, JSON-safe (null where a label had one class)."""
    best = result.history[result.best_epoch - 1] if result.best_epoch else result.history[-1]

    def safe(value: float) -> float | None:
        return None if np.isnan(value) else round(float(value), 6)

    return {
        "best_epoch": result.best_epoch,
        "mean_auc": safe(best["val_mean_auc"]),
        "auc": {
            key.removeprefix("val_auc."): safe(value)
            for key, value in best.items()
            if key.startswith("val_auc.")
        },
    }
