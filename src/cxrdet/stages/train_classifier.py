"""DVC stage `train_classifier@<fold>`: every classifier variant trained on the other
folds, with TTA predictions on this fold (out-of-fold) and on the holdout.

Runs as one process or under `torchrun --nproc-per-node=N` (DDP); only rank 0 writes
files and logs to MLflow. Writes models/classifier/fold<k>/<variant>.pt and
results/classifier/folds/fold<k>/{oof,holdout}.parquet, metrics.json, roc.png.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from cxrdet.config import load_params
from cxrdet.data.datasets import Prepared, read_prepared
from cxrdet.data.folds import HOLDOUT, fold_ids
from cxrdet.errors import ConfigError
from cxrdet.io import write_json, write_parquet
from cxrdet.models.classifier import save_classifier
from cxrdet.paths import (
    CHECKPOINTS,
    CLASSIFIER_FOLDS,
    CLASSIFIER_MODELS,
    FOLDS,
    PREPARED_DETECT,
    PRETRAINED,
)
from cxrdet.runtime.session import start_runtime, stop_runtime
from cxrdet.stages.training_runs import (
    detect_tags,
    log_detect_dataset,
    main_stage_run,
    model_run,
    step_logger,
)
from cxrdet.tracking.logged_models import log_model_files, model_card
from cxrdet.tracking.runs import log_history, log_numeric
from cxrdet.train.classifier import predict_classifier_views, train_fold_classifier
from cxrdet.train.curves import plot_curves
from cxrdet.train.predictions import log_summary, opacity_truth, plot_roc, roc_curves, summarize


def run(root: Path, fold: int) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    if fold not in params.classifier.folds:
        raise ConfigError(
            f"classifier.folds: fold {fold} is not listed ({params.classifier.folds})"
        )
    prepared = read_prepared(root / PREPARED_DETECT)
    split = pd.read_parquet(root / FOLDS)
    stage = f"train_classifier@{fold}"
    checkpoints = root / CHECKPOINTS / stage
    results = root / CLASSIFIER_FOLDS / f"fold{fold}"
    runtime = start_runtime(params.train)
    main_process = runtime.context.is_main
    tags = detect_tags(prepared, str(fold))
    run = main_stage_run(
        main_process,
        "train_classifier",
        root,
        params,
        tags,
        {
            "classifier": params.classifier.model_dump(),
            "train": params.train.model_dump(),
            "world_size": runtime.context.world_size,
            "fold": fold,
        },
        run_name=stage,
    )
    parts: dict[str, list[pd.DataFrame]] = {"oof": [], "holdout": []}
    ids = {
        "oof": np.asarray(fold_ids(split, fold), dtype=object),
        "holdout": np.asarray(fold_ids(split, HOLDOUT), dtype=object),
    }
    log = step_logger(main_process)
    histories: dict[str, list[dict[str, float]]] = {}
    try:
        with run as active:
            log_detect_dataset(main_process, prepared, root)
            for number, variant in enumerate(params.classifier.variants):
                child = model_run(main_process, "train_classifier", variant.name, f"f{fold}", tags)
                with child:
                    if main_process:
                        mlflow.log_params(
                            {f"variant.{k}": str(v) for k, v in variant.model_dump().items()}
                        )
                    trained = train_fold_classifier(
                        variant,
                        f"classifier.variants.{number}",
                        fold,
                        prepared,
                        split,
                        params.classifier,
                        root / PRETRAINED / f"{variant.backbone}.pt",
                        runtime,
                        checkpoints / variant.name,
                        log,
                    )
                    for part, image_ids in ids.items():
                        parts[part].append(
                            predict_classifier_views(
                                trained, prepared, image_ids, params.classifier, runtime
                            )
                        )
                    if main_process:
                        model_file = root / CLASSIFIER_MODELS / f"fold{fold}" / f"{variant.name}.pt"
                        save_classifier(model_file, trained.model, trained.config)
                        log_numeric({"best_epoch": trained.result.best_epoch})
                        histories[variant.name] = trained.result.history
                        log_history(trained.result.history, variant.name, active.info.run_id)
                        log_model_files(
                            f"{variant.name}-fold{fold}",
                            [model_file],
                            model_card(
                                f"{variant.name}, fold {fold}",
                                {
                                    **tags,
                                    "stage": stage,
                                    **variant.model_dump(),
                                    "best_epoch": trained.result.best_epoch,
                                    "best validation score": trained.result.best_score,
                                },
                                "`cxrdet.models.classifier.load_classifier(path)`; the ensemble "
                                "that serves is the registered model (`cxrdet registry list`).",
                            ),
                            model_type="cxrdet.classifier",
                            params={"fold": fold, **variant.model_dump()},
                            tags=tags,
                            run_id=active.info.run_id,
                        )
            if main_process:
                write_outputs(parts, prepared, fold, results)
                log_curves(histories, stage)
                shutil.rmtree(checkpoints, ignore_errors=True)  # only a killed run resumes
    finally:
        stop_runtime()


def log_curves(histories: dict[str, list[dict[str, float]]], stage: str) -> None:
    """Every variant's learning curves in one picture on the stage's run (MLflow only)."""
    with tempfile.TemporaryDirectory(prefix="cxrdet-plots-") as scratch:
        path = Path(scratch) / "curves.png"
        plot_curves(histories, "auc", path, f"{stage}: learning curves")
        mlflow.log_artifact(str(path))


def write_outputs(
    parts: dict[str, list[pd.DataFrame]], prepared: Prepared, fold: int, results: Path
) -> None:
    tables = {part: pd.concat(frames, ignore_index=True) for part, frames in parts.items()}
    for part, table in tables.items():
        write_parquet(table, results / f"{part}.parquet")
    truth = opacity_truth(prepared.images, prepared.boxes)
    metrics = {"fold": fold, **summarize(tables, truth)}
    write_json(metrics, results / "metrics.json")
    plot_roc(
        roc_curves(tables, truth),
        results / "roc.png",
        f"Opacity classifiers, fold {fold}: TTA views averaged",
    )
    log_summary(metrics)
    for name in ("metrics.json", "roc.png"):
        mlflow.log_artifact(str(results / name))
    print(
        f"fold {fold}: out-of-fold AUC {metrics['oof_auc']} (models and views averaged) "
        f"-> {results}"
    )
