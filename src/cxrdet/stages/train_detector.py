"""DVC stage `train_detector@<fold>`: every family of `detector.families` (the RetinaNet with
the tuned anchors; the deformable two-stage detector) trained on the other folds, one after
the other through the same loop, validated by the RSNA score every epoch (best checkpoint
kept, resumed when killed), then their TTA predictions on this fold (out-of-fold) and on
the holdout.

Runs as one process or under `torchrun --nproc-per-node=N` (DDP); only rank 0 writes
files and logs to MLflow (a nested run per family). Writes models/detector/fold<k>/model.pt
(RetinaNet) and two_stage.pt, results/detector/folds/fold<k>/{oof,holdout}_{boxes,images}.parquet
(the contract is in cxrdet.infer.detector_tta; every family's rows, told apart by `model`)
and metrics.json (the first family's scores at the top, every family's under "models").
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from cxrdet.config import load_params
from cxrdet.data.datasets import Prepared, read_prepared, truth_boxes
from cxrdet.data.folds import HOLDOUT, fold_ids, training_ids
from cxrdet.errors import ConfigError
from cxrdet.evaluation import fold_overlay
from cxrdet.infer.detector_tta import ORIGINAL
from cxrdet.io import write_json, write_parquet
from cxrdet.metrics.detection import view_rsna
from cxrdet.models.backbone import backbone_source
from cxrdet.paths import (
    ANCHORS,
    CHECKPOINTS,
    DETECTOR_FOLDS,
    DETECTOR_MODELS,
    FOLDS,
    PREPARED_DETECT,
    PRETRAINED,
)
from cxrdet.runtime.session import start_runtime, stop_runtime
from cxrdet.stages.training_runs import (
    detect_tags,
    log_detect_dataset,
    log_family_model,
    main_stage_run,
    model_run,
    read_tuned_anchors,
    step_logger,
)
from cxrdet.tracking.runs import log_history, log_numeric
from cxrdet.train.curves import plot_curves
from cxrdet.train.detector import detector_data, train_families


def run(root: Path, fold: int) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    detector = params.detector
    if fold not in detector.folds:
        raise ConfigError(f"detector.folds: fold {fold} is not listed ({detector.folds})")
    tuned = read_tuned_anchors(root)
    prepared = read_prepared(root / PREPARED_DETECT)
    split = pd.read_parquet(root / FOLDS)
    ids = {
        "train": training_ids(split, fold),
        "oof": fold_ids(split, fold),
        "holdout": fold_ids(split, HOLDOUT),
    }
    stage = f"train_detector@{fold}"
    checkpoints = root / CHECKPOINTS / stage
    results = root / DETECTOR_FOLDS / f"fold{fold}"
    runtime = start_runtime(params.train)
    main_process = runtime.context.is_main
    tags = detect_tags(prepared, str(fold), detector.name)
    run = main_stage_run(
        main_process,
        "train_detector",
        root,
        params,
        tags,
        {
            "detector": detector.model_dump(),
            "train": params.train.model_dump(),
            "anchors": tuned,
            "world_size": runtime.context.world_size,
            "fold": fold,
        },
        run_name=stage,
    )
    histories: dict[str, list[dict[str, float]]] = {}
    try:
        with run as active:
            log_detect_dataset(main_process, prepared, root)
            data = detector_data(prepared, detector)
            weights = backbone_source(detector, root / PRETRAINED, params.pretrain.allow_download)
            parts: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]] = {"oof": [], "holdout": []}
            scores: dict[str, dict[str, float]] = {}
            trained = train_families(
                detector,
                data,
                prepared,
                ids,
                runtime,
                fold=fold,
                validate="oof",
                predict=list(parts),
                model_dir=root / DETECTOR_MODELS / f"fold{fold}",
                checkpoint_dir=checkpoints,
                weights=weights,
                tuned_anchors=tuned,
                tuned_key=ANCHORS,
                family_run=lambda settings: model_run(
                    main_process, "train_detector", settings.name, f"f{fold}", tags
                ),
                log=step_logger(main_process),
                desc=f"fold {fold}",
            )
            for done in trained:  # the main process only, each inside its family's nested run
                name, tables, result = done.settings.name, done.tables, done.result
                for part, table in tables.items():
                    parts[part].append(table)
                oof_score, threshold = view_rsna(
                    truth_boxes(prepared, ids["oof"]), tables["oof"][0], ORIGINAL
                )
                holdout_score, _ = view_rsna(
                    truth_boxes(prepared, ids["holdout"]),
                    tables["holdout"][0],
                    ORIGINAL,
                    threshold=threshold,
                )
                scores[name] = {
                    "best_epoch": result.best_epoch,
                    f"best_val_{detector.monitor}": result.best_score,
                    "oof_rsna_score": oof_score,
                    "oof_rsna_threshold": threshold,
                    "holdout_rsna_score": holdout_score,
                }
                log_numeric(scores[name])
                histories[name] = result.history
                log_history(result.history, name, active.info.run_id)
                log_family_model(
                    f"{name}-fold{fold}",
                    done.settings.family,
                    root / DETECTOR_MODELS / f"fold{fold}" / done.settings.model_file,
                    f"{name}, fold {fold}",
                    {**tags, "stage": stage, **scores[name]},
                    {"fold": fold, "family": done.settings.family},
                    tags,
                    active.info.run_id,
                )
                print(
                    f"fold {fold}: out-of-fold RSNA {oof_score:.4f} ({name}, original view, "
                    f"score >= {threshold}), holdout {holdout_score:.4f}"
                )
            if main_process:
                for part, tables in parts.items():
                    write_parquet(
                        pd.concat([boxes for boxes, _ in tables], ignore_index=True),
                        results / f"{part}_boxes.parquet",
                    )
                    write_parquet(
                        pd.concat([images for _, images in tables], ignore_index=True),
                        results / f"{part}_images.parquet",
                    )
                metrics = {
                    "fold": fold,
                    **next(iter(scores.values())),
                    "models": scores,
                    "n_oof": len(ids["oof"]),
                    "n_holdout": len(ids["holdout"]),
                }
                write_json(metrics, results / "metrics.json")
                # The first family's scores, as metrics.json has them at the top (each family's
                # are on its nested run); the fold is a tag and a param, not a metric.
                log_numeric({k: v for k, v in metrics.items() if k not in ("fold", "models")})
                mlflow.log_artifact(str(results / "metrics.json"))
                first = next(iter(scores))
                log_fold_plots(
                    stage,
                    histories,
                    detector.monitor,
                    prepared,
                    ids["holdout"],
                    parts["holdout"][0][0],  # the first family's boxes
                    scores[first]["oof_rsna_threshold"],
                )
                shutil.rmtree(checkpoints, ignore_errors=True)  # only a killed run resumes
                print(f"fold {fold}: {', '.join(scores)} -> {results}")
    finally:
        stop_runtime()


def log_fold_plots(
    stage: str,
    histories: dict[str, list[dict[str, float]]],
    monitor: str,
    prepared: Prepared,
    holdout_ids: list[str],
    holdout_boxes: pd.DataFrame,
    threshold: float,
) -> None:
    """The fold's learning curves and its first family's holdout boxes at its out-of-fold
    threshold, on the stage's run (MLflow only: the report stages' plots are DVC's)."""
    first = next(iter(histories))
    with tempfile.TemporaryDirectory(prefix="cxrdet-plots-") as scratch:
        folder = Path(scratch)
        plot_curves(histories, monitor, folder / "curves.png", f"{stage}: learning curves")
        fold_overlay(
            prepared,
            holdout_ids,
            holdout_boxes,
            threshold,
            folder / "holdout.png",
            f"{first}, {stage}",
        )
        mlflow.log_artifacts(str(folder))
