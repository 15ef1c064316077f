"""DVC stage `detector_report`: every fold detector's predictions together.

Writes results/detector/metrics.json for the first family of `detector.families` (each
family's own under `models` when there are several): oof_rsna_score (the original view of all folds'
out-of-fold predictions, at the score threshold best over all of them), each fold's
out-of-fold and holdout scores at that threshold, holdout_rsna_score (their mean over
fold models), each view's out-of-fold score, and the trivial baseline's scores (the
training boxes' mean box in every image). Draws results/detector/holdout.png: holdout
X-rays with truth (green) and the best fold model's predicted (red) boxes. Both go to MLflow.
With detector_final.enabled, `final`: each family's final model (train_detector_final) on the
holdout at the same out-of-fold threshold, beside the fold models' holdout scores.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from cxrdet.config import load_params
from cxrdet.data.datasets import read_prepared, truth_boxes
from cxrdet.data.folds import HOLDOUT, fold_ids
from cxrdet.errors import CxrdetError
from cxrdet.evaluation import fold_overlay, folds_report
from cxrdet.families import family_settings
from cxrdet.infer.detector_tta import ORIGINAL
from cxrdet.io import write_json
from cxrdet.metrics.detection import view_rsna
from cxrdet.paths import (
    DETECTOR_FINAL,
    DETECTOR_FOLDS,
    DETECTOR_RESULTS,
    FOLDS,
    PREPARED_DETECT,
)
from cxrdet.tracking.runs import log_numeric, stage_run


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    folds_dir = root / DETECTOR_FOLDS
    folds = params.detector.folds
    missing = [
        f"fold{k}" for k in folds if not (folds_dir / f"fold{k}" / "oof_boxes.parquet").exists()
    ]
    if missing:
        raise CxrdetError(
            f"{folds_dir}: no predictions for {missing}; run `dvc repro train_detector`"
        )
    prepared = read_prepared(root / PREPARED_DETECT)
    split = pd.read_parquet(root / FOLDS)
    boxes = {
        part: {k: pd.read_parquet(folds_dir / f"fold{k}" / f"{part}_boxes.parquet") for k in folds}
        for part in ("oof", "holdout")
    }
    # One report per detector family (the `model` column); the first family's is the headline.
    names = [family_settings(params.detector, family).name for family in params.detector.families]
    reports = {
        name: folds_report(
            prepared,
            split,
            *(
                {k: table[table["model"] == name] for k, table in boxes[part].items()}
                for part in ("oof", "holdout")
            ),
        )
        for name in names
    }
    if (
        params.detector_final.enabled
    ):  # the final models on the holdout, at the folds' out-of-fold threshold
        final = pd.read_parquet(root / DETECTOR_FINAL / "holdout_boxes.parquet")
        truth = truth_boxes(prepared, fold_ids(split, HOLDOUT))
        for name, other in reports.items():
            score = view_rsna(
                truth, final[final["model"] == name], ORIGINAL, threshold=other.threshold
            )[0]
            other.metrics["final"] = {"holdout_rsna_score": score}
    report = reports[names[0]]
    if len(names) > 1:
        report.metrics["models"] = {name: dict(other.metrics) for name, other in reports.items()}
    out = root / DETECTOR_RESULTS
    with stage_run(
        "detector_report",
        root=root,
        experiment=params.tracking.experiment,
        tags={
            "cxrdet.dataset": "detect",
            "cxrdet.data_hash": prepared.info["data_hash"],
            "cxrdet.model": params.detector.name,
        },
        params={"detector.folds": folds, "detector.families": names},
        tracking_uri=params.tracking.tracking_uri,
    ):
        write_json(report.metrics, out / "metrics.json")
        fold_overlay(
            prepared,
            fold_ids(split, HOLDOUT),
            boxes["holdout"][report.best_fold].query("model == @names[0]"),
            report.threshold,
            out / "holdout.png",
            f"fold{report.best_fold} {names[0]}",
        )
        log_numeric(report.metrics)
        for name in ("metrics.json", "holdout.png"):
            mlflow.log_artifact(str(out / name))
    metrics = report.metrics
    print(
        f"detector out-of-fold RSNA {metrics['oof_rsna_score']:.4f} "
        f"(score >= {report.threshold}), holdout {metrics['holdout_rsna_score']:.4f}; "
        f"mean-box baseline {metrics['baseline']['oof_rsna_score']:.4f} / "
        f"{metrics['baseline']['holdout_rsna_score']:.4f} -> {out}"
    )
