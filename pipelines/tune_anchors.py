"""DVC stage `tune_anchors`: the detector's anchors, searched by Optuna over short proxy trainings.

Writes results/tuning/anchors.json: {"anchors": {"sizes", "scales", "ratios"}, "source", ...},
which every `train_detector@<fold>` reads. With tune_anchors.enabled false it holds
params' detector.anchors as they are. The study lives in results/tuning/anchors.journal
(or tune_anchors.study.storage): a killed run resumes, and more workers may join it by
running this script again in parallel (each needs the same params).
"""

from __future__ import annotations

import mlflow
import pandas as pd

from cxrdet.config import load_params
from cxrdet.data.datasets import read_prepared
from cxrdet.data.folds import HOLDOUT
from cxrdet.errors import exit_code_of
from cxrdet.io import write_json
from cxrdet.models.retinanet import create_detector_backbone, pyramid_levels
from cxrdet.paths import project_root
from cxrdet.tracking.runs import log_numeric, stage_run
from cxrdet.train.detector import detector_data, resolve_anchors
from cxrdet.train.runtime import start_runtime, stop_runtime
from cxrdet.tuning.anchors import tune_anchors

OUT = "results/tuning/anchors.json"
JOURNAL = "results/tuning/anchors.journal"


def main() -> None:
    root = project_root()
    params = load_params(root / "params.yaml")
    tune, detector = params.tune_anchors, params.detector
    prepared = read_prepared(root / "data/prepared/detect")
    split = pd.read_parquet(root / "data/split/folds.parquet")
    train_ids = split.loc[(split["fold"] != tune.fold) & (split["fold"] != HOLDOUT), "image_id"].tolist()
    val_ids = split.loc[split["fold"] == tune.fold, "image_id"].tolist()
    runtime = start_runtime(params.train)
    try:
        with stage_run(
            "tune_anchors", root=root, experiment=params.tracking.experiment,
            params={"tune_anchors": tune.model_dump(), "detector": detector.model_dump(), "train": params.train.model_dump()},
            tags={"cxrdet.dataset": "detect", "cxrdet.data_hash": prepared.info["data_hash"], "cxrdet.fold": str(tune.fold)},
            tracking_uri=params.tracking.tracking_uri,
        ):
            if tune.enabled:
                result = tune_anchors(
                    detector, tune, detector_data(prepared, detector), prepared, train_ids, val_ids, runtime,
                    root / JOURNAL, root / "models/pretrained", params.pretrain.allow_download,
                )
                anchors, summary = result.anchors, result.summary
                log_numeric({f"best_{detector.monitor}": summary[detector.monitor], "best_bpr": summary["bpr"],
                             "trials": summary["trials"]})
            else:
                _, strides = pyramid_levels(create_detector_backbone(detector.backbone).feature_info, detector.p2)
                anchors, summary = resolve_anchors(detector.anchors, strides, None, OUT), {"source": "params"}
            write_json({"anchors": anchors.to_dict(), **summary}, root / OUT)
            mlflow.log_artifact(str(root / OUT))
    finally:
        stop_runtime()
    print(f"anchors ({summary['source']}): sizes {anchors.sizes}, scales {anchors.scales}, ratios {anchors.ratios} -> {OUT}")


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "tune_anchors"))
