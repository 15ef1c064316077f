"""train_detector@<fold> with both families on synthetic data: one stage trains the RetinaNet
and the deformable two-stage detector through the same loop, writes each family's model file
and their per-view predictions in one contract (told apart by `model`), which the ensemble
recipe fuses as it is and the predictor's project spec lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrdet.ensemble import EnsembleRecipe, Gating, MemberPredictions, apply_recipe
from cxrdet.families import load_any_detector
from cxrdet.infer.detector_tta import BOX_COLUMNS
from cxrdet.infer.predictor import project_spec
from cxrdet.models.two_stage import TwoStageDetector

from prepared_demo import prepare_project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VIEWS = 2  # {original, hflip}


def run(root: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "CXRDET_ROOT": str(root),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / script), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def test_one_fold_stage_trains_both_families_into_one_contract(demo_raw, tmp_path):
    root = prepare_project(demo_raw, tmp_path, folds=2)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"]["folds"] = 2
    params["train"] |= {"progress": False, "threads": 1}
    params["classifier"]["folds"] = [0, 1]
    params["tune_anchors"]["enabled"] = False
    params["detector"] |= {
        "folds": [0, 1],
        "weights": "none",
        "families": ["retinanet", "two_stage"],
    }
    params["detector"]["optim"] |= {"epochs": 2, "batch_size": 4}
    params["detector"]["tta"] |= {"hflip": True, "scales": [1.0], "batch_size": 4}
    params["detector"]["two_stage"] |= {
        "optim": {**params["detector"]["optim"], "epochs": 2},
        "relation": {"heads": 4, "geometry_dim": 16},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run(root, "tune_anchors.py")
    done = run(root, "train_detector.py", "--fold", "0")
    assert done.stdout.count("fold 0: out-of-fold RSNA") == 2

    split = pd.read_parquet(root / "data/split/folds.parquet")
    results = root / "results/detector/folds/fold0"
    for part, fold in (("oof", 0), ("holdout", -1)):
        boxes = pd.read_parquet(results / f"{part}_boxes.parquet")
        images = pd.read_parquet(results / f"{part}_images.parquet")
        ids = set(split.loc[split["fold"] == fold, "image_id"])
        assert list(boxes.columns) == BOX_COLUMNS and set(boxes["model"]) == {
            "retinanet",
            "two_stage",
        }
        assert len(images) == len(ids) * VIEWS * 2 and set(images["image_id"]) == ids
        assert (
            boxes[boxes["model"] == "two_stage"].groupby(["image_id", "view"]).size().max() <= 5
        )  # 1st place: 5 boxes
    metrics = json.loads((results / "metrics.json").read_text())
    assert (
        set(metrics["models"]) == {"retinanet", "two_stage"}
        and metrics["oof_rsna_score"] == metrics["models"]["retinanet"]["oof_rsna_score"]
    )
    model, config = load_any_detector(root / "models/detector/fold0/two_stage.pt")
    assert (
        isinstance(model, TwoStageDetector)
        and config["name"] == "two_stage"
        and config["image_class_names"] == []
    )
    assert not (root / "models/checkpoints/train_detector@0").exists()

    # detector_report scores each family on its own rows (of the one trained fold here).
    (root / "params.yaml").write_text(
        yaml.safe_dump({**params, "detector": {**params["detector"], "folds": [0]}})
    )
    run(root, "detector_report.py")
    report = json.loads((root / "results/detector/metrics.json").read_text())
    assert set(report["models"]) == {"retinanet", "two_stage"}
    assert report["oof_rsna_score"] == report["models"]["retinanet"]["oof_rsna_score"]
    for name in ("retinanet", "two_stage"):  # each on its own boxes, as the fold stage scored them
        assert report["models"][name]["oof_rsna_score"] == metrics["models"][name]["oof_rsna_score"]
    (root / "params.yaml").write_text(yaml.safe_dump(params))

    # The ensemble fuses both families of an image as two members, without special cases.
    oof = MemberPredictions(
        pd.read_parquet(results / "oof_boxes.parquet"),
        pd.read_parquet(results / "oof_images.parquet"),
        pd.DataFrame(columns=["image_id", "fold", "model", "view", "opacity"]),
        read_sizes(root),
    )
    fused = apply_recipe(oof, EnsembleRecipe(gating=Gating("none", {}), score_threshold=0.0)).boxes
    assert set(fused["image_id"]) <= set(split.loc[split["fold"] == 0, "image_id"]) and len(fused)
    assert not {"model", "fold"} & set(fused.columns)
    (root / "results/tuning/ensemble.json").write_text(
        json.dumps({"recipe": EnsembleRecipe().to_dict()})
    )
    assert project_spec(root).detectors == [
        f"models/detector/fold{k}/{name}" for k in (0, 1) for name in ("model.pt", "two_stage.pt")
    ]


def read_sizes(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "data/prepared/detect/images.parquet")[
        ["image_id", "width", "height"]
    ]
