"""DVC stage `classifier_report`: every fold's predictions together.

Writes results/classifier/metrics.json (oof_auc: opacity vs not over all out-of-fold
images, every model and TTA view averaged; holdout_auc: every fold model too; the same
per model variant and for the original view alone) and results/classifier/roc.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd

from cxrdet.config import load_params
from cxrdet.errors import CxrdetError
from cxrdet.io import write_json
from cxrdet.paths import CLASSIFIER_FOLDS, CLASSIFIER_RESULTS, PREPARED_DETECT
from cxrdet.tracking.runs import stage_run
from cxrdet.train.predictions import log_summary, opacity_truth, plot_roc, roc_curves, summarize


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    prepared = root / PREPARED_DETECT
    folds = root / CLASSIFIER_FOLDS
    missing = [
        f"fold{k}"
        for k in params.classifier.folds
        if not (folds / f"fold{k}" / "oof.parquet").exists()
    ]
    if missing:
        raise CxrdetError(
            f"{folds}: no predictions for {missing}; run `dvc repro train_classifier`"
        )
    tables = {
        part: pd.concat(
            [
                pd.read_parquet(folds / f"fold{k}" / f"{part}.parquet")
                for k in params.classifier.folds
            ],
            ignore_index=True,
        )
        for part in ("oof", "holdout")
    }
    truth = opacity_truth(
        pd.read_parquet(prepared / "images.parquet"), pd.read_parquet(prepared / "boxes.parquet")
    )
    data_hash = json.loads((prepared / "dataset.json").read_text())["data_hash"]
    out = root / CLASSIFIER_RESULTS
    with stage_run(
        "classifier_report",
        root=root,
        experiment=params.tracking.experiment,
        tags={"cxrdet.dataset": "detect", "cxrdet.data_hash": data_hash},
        params={"classifier.folds": params.classifier.folds},
        tracking_uri=params.tracking.tracking_uri,
    ):
        metrics = {"folds": params.classifier.folds, **summarize(tables, truth)}
        write_json(metrics, out / "metrics.json")
        plot_roc(
            roc_curves(tables, truth),
            out / "roc.png",
            "Opacity classifiers: out-of-fold and holdout",
        )
        log_summary(metrics)
        for name in ("metrics.json", "roc.png"):
            mlflow.log_artifact(str(out / name))
    print(
        f"classifier out-of-fold AUC {metrics['oof_auc']}, "
        f"holdout AUC {metrics['holdout_auc']} -> {out}"
    )
