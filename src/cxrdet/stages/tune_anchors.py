"""DVC stage `tune_anchors`: the detector's anchors, searched by Optuna over short proxy trainings.

Writes results/tuning/anchors.json: {"anchors": {"sizes", "scales", "ratios"}, "source", ...},
which every `train_detector@<fold>` reads, and the proxy score of params' detector.anchors
(`configured_<monitor>`) beside the best tuned one (`best_<monitor>`), also logged to MLflow.
With tune_anchors.enabled false it holds params' detector.anchors as they are. The study lives
in results/tuning/anchors.journal (or tune_anchors.study.storage): a killed run resumes, and more
workers may join it by running this script again in parallel (each needs the same params).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from cxrdet.config import load_params
from cxrdet.data.datasets import read_prepared
from cxrdet.data.folds import fold_ids, training_ids
from cxrdet.io import write_json
from cxrdet.models.anchors import resolve_anchors
from cxrdet.models.retinanet import create_detector_backbone, pyramid_levels
from cxrdet.paths import ANCHORS, FOLDS, PREPARED_DETECT, PRETRAINED
from cxrdet.runtime.session import start_runtime, stop_runtime
from cxrdet.stages.training_runs import detect_tags, log_detect_dataset
from cxrdet.tracking.runs import log_numeric, stage_run
from cxrdet.train.detector import detector_data
from cxrdet.tuning.anchors import tune_anchors

JOURNAL = "results/tuning/anchors.journal"


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    tune, detector = params.tune_anchors, params.detector
    prepared = read_prepared(root / PREPARED_DETECT)
    split = pd.read_parquet(root / FOLDS)
    train_ids = training_ids(split, tune.fold)
    val_ids = fold_ids(split, tune.fold)
    # A declared DVC out (persist: the study resumes from it), so it must exist after every run,
    # also when the study is off or lives in an RDB; an empty file is an empty Optuna journal.
    (root / JOURNAL).parent.mkdir(parents=True, exist_ok=True)
    (root / JOURNAL).touch()
    runtime = start_runtime(params.train)
    try:
        with stage_run(
            "tune_anchors",
            root=root,
            experiment=params.tracking.experiment,
            params={
                "tune_anchors": tune.model_dump(),
                "detector": detector.model_dump(),
                "train": params.train.model_dump(),
            },
            tags=detect_tags(prepared, str(tune.fold)),
            tracking_uri=params.tracking.tracking_uri,
        ):
            log_detect_dataset(True, prepared, root)
            if tune.enabled:
                result = tune_anchors(
                    detector,
                    tune,
                    detector_data(prepared, detector),
                    prepared,
                    train_ids,
                    val_ids,
                    runtime,
                    root / JOURNAL,
                    root / PRETRAINED,
                    params.pretrain.allow_download,
                )
                anchors, summary = result.anchors, result.summary
                # configured.val.<monitor> (params' anchors) beside best.val.<monitor> (the best
                # tuned), the names each trial logs its own score under
                monitor = detector.monitor
                scores = {
                    f"configured_val_{monitor}": summary[f"configured_{monitor}"],
                    f"best_val_{monitor}": summary[f"best_{monitor}"],
                }
                keys = ("trials", "budget", "bpr")
                log_numeric({key: summary[key] for key in keys} | scores)
                mlflow.set_tag("cxrdet.anchors", "configured" if summary["configured"] else "tuned")
            else:
                _, strides = pyramid_levels(
                    create_detector_backbone(detector.backbone).feature_info, detector.p2
                )
                anchors, summary = (
                    resolve_anchors(detector.anchors, strides, None, ANCHORS),
                    {"source": "params"},
                )
            write_json({"anchors": anchors.to_dict(), **summary}, root / ANCHORS)
            mlflow.log_artifact(str(root / ANCHORS))
    finally:
        stop_runtime()
    if tune.enabled:
        metric, best = detector.monitor, summary[f"best_{detector.monitor}"]
        print(
            f"anchors: {metric} {summary[f'configured_{metric}']:.4f} configured, "
            f"{'-' if best is None else f'{best:.4f}'} best tuned; kept the "
            f"{'configured' if summary['configured'] else 'tuned'} (min_gain {tune.min_gain})"
        )
    print(
        f"anchors ({summary['source']}): sizes {anchors.sizes}, scales {anchors.scales}, "
        f"ratios {anchors.ratios} -> {ANCHORS}"
    )
