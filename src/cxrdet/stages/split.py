"""DVC stage `split`: stratified patient-grouped folds + holdout of the detect dataset."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd

from cxrdet.config import load_params
from cxrdet.data.folds import make_folds, split_stats
from cxrdet.io import write_json, write_parquet
from cxrdet.paths import FOLDS, PREPARED_DETECT, SPLIT_REPORT
from cxrdet.tracking.runs import log_numeric, stage_run


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    prepared = root / PREPARED_DETECT
    images = pd.read_parquet(prepared / "images.parquet")
    boxes = pd.read_parquet(prepared / "boxes.parquet")
    info = json.loads((prepared / "dataset.json").read_text())
    with stage_run(
        "split",
        root=root,
        experiment=params.tracking.experiment,
        params={"split": params.split.model_dump()},
        tags={"cxrdet.dataset": "detect", "cxrdet.data_hash": info["data_hash"]},
        tracking_uri=params.tracking.tracking_uri,
    ):
        split = make_folds(
            images,
            boxes,
            folds=params.split.folds,
            holdout_fraction=params.split.holdout_fraction,
            seed=params.split.seed,
            max_box_count=params.split.max_box_count,
            group_by_patient=params.split.group_by_patient,
        )
        stats = split_stats(split, images)
        write_parquet(split, root / FOLDS)
        write_json(stats, root / SPLIT_REPORT)
        log_numeric(stats)
        mlflow.log_artifact(str(root / SPLIT_REPORT))
    print(f"split {len(split)} images into {params.split.folds} folds + holdout -> data/split/")
