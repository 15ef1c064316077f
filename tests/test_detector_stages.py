"""The detector stages end to end on synthetic data: tune_anchors (Optuna, nested MLflow
runs, pruning, resume), train_detector@<fold> (also under torchrun with 2 CPU processes),
detector_report; resuming a killed fold; a bad anchors file reported by its key."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrdet.infer.detector_tta import BOX_COLUMNS
from cxrdet.models.retinanet import load_detector

from prepared_demo import prepare_project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VIEWS = 4  # {original, hflip} x scales {1.0, 1.2}


def tiny_params(folds: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"]["folds"] = folds
    params["train"] |= {"progress": False, "threads": 1}
    params["classifier"]["folds"] = list(range(folds))
    params["detector"] |= {
        "folds": list(range(folds)),
        "weights": "none",
        "frozen_bn": False,
        "freeze_encoder_epochs": 0,
        "families": ["retinanet"],  # the two-stage family's stage: tests/test_two_stage_stage.py
    }
    params["detector"]["optim"] |= {"epochs": 2, "batch_size": 4}
    params["detector"]["tta"] |= {"hflip": True, "scales": [1.0, 1.2], "batch_size": 4}
    params["tune_anchors"] |= {
        "enabled": True,
        "trials": 3,
        "epochs": 2,
        "subset": 12,
        "min_bpr": 0.5,
    }
    # all of the tiny fold's validation images; no budget: 20% of 2 epochs holds no trial
    params["tune_anchors"] |= {"val_subset": 0, "budget_fraction": None}
    params["tune_anchors"]["pruner"] |= {"name": "median", "startup_trials": 1, "warmup_epochs": 0}
    return params


def python(script: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / script)]


def run_stage(
    root: Path, *command: str, expect: int = 0, timeout: int = 900
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"CXRDET_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == expect, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def runs(root: Path) -> list[tuple[str, str, dict[str, str]]]:
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        found = db.execute("SELECT run_uuid, name, status FROM runs").fetchall()
        tags = db.execute("SELECT run_uuid, key, value FROM tags").fetchall()
    by_run: dict[str, dict[str, str]] = {uuid: {} for uuid, _, _ in found}
    for uuid, key, value in tags:
        by_run[uuid][key] = value
    return [(name, status, by_run[uuid] | {"run_id": uuid}) for uuid, name, status in found]


@pytest.fixture(scope="module")
def project(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = prepare_project(demo_raw, tmp_path_factory.mktemp("detector"), folds=2)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(folds=2)))
    run_stage(root, *python("tune_anchors.py"))
    return root


def test_tune_anchors_writes_the_best_anchors_and_nests_trials(project):
    tuned = json.loads((project / "results/tuning/anchors.json").read_text())
    assert (
        tuned["source"] == "tune_anchors" and len(tuned["anchors"]["sizes"]) == 5
    )  # P3-P7 (params: p2 off)
    assert sum(tuned["trials"].values()) == 3 and tuned["trials"]["complete"] >= 1
    found = runs(project)
    (study_run,) = [tags["run_id"] for name, _, tags in found if name == "tune_anchors"]
    trials = [(status, tags) for name, status, tags in found if name.startswith("anchor-trial-")]
    assert len(trials) == 3 and all(t["mlflow.parentRunId"] == study_run for _, t in trials)
    assert all(
        status == "FINISHED" and t["optuna.state"] in ("COMPLETE", "PRUNED") for status, t in trials
    )
    # A rerun resumes the finished study: no new trial.
    run_stage(project, *python("tune_anchors.py"))
    assert len([name for name, _, _ in runs(project) if name.startswith("anchor-trial-")]) == 3


def test_fold_stage_writes_model_predictions_per_view_and_metrics(project):
    run_stage(project, *python("train_detector.py"), "--fold", "0")
    split = pd.read_parquet(project / "data/split/folds.parquet")
    results = project / "results/detector/folds/fold0"
    for part, fold in (("oof", 0), ("holdout", -1)):
        boxes = pd.read_parquet(results / f"{part}_boxes.parquet")
        images = pd.read_parquet(results / f"{part}_images.parquet")
        ids = set(split.loc[split["fold"] == fold, "image_id"])
        assert list(boxes.columns) == BOX_COLUMNS and set(boxes["image_id"]) <= ids
        assert len(images) == len(ids) * VIEWS and set(images["image_id"]) == ids
        assert images["view"].nunique() == VIEWS and "opacity" in images
        assert ((images.filter(like="p_").sum(axis=1) - 1).abs() < 1e-5).all()
    metrics = json.loads((results / "metrics.json").read_text())
    assert {"oof_rsna_score", "holdout_rsna_score", "best_epoch"} <= set(metrics)
    model, config = load_detector(project / "models/detector/fold0/model.pt")
    tuned = json.loads((project / "results/tuning/anchors.json").read_text())
    assert list(model.config.anchors.sizes) == tuned["anchors"]["sizes"] and config["fold"] == 0
    assert not (project / "models/checkpoints/train_detector@0").exists()
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        steps = db.execute("SELECT DISTINCT step FROM metrics WHERE key = 'val.rsna'").fetchall()
    assert {1, 2} <= {step for (step,) in steps}  # validated every epoch


def test_torchrun_two_cpu_processes_train_a_fold_and_only_rank_0_writes(project):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = run_stage(project, *torchrun, str(ROOT / "pipelines/train_detector.py"), "--fold", "1")
    assert done.stdout.count("fold 1: out-of-fold RSNA") == 1
    split = pd.read_parquet(project / "data/split/folds.parquet")
    images = pd.read_parquet(project / "results/detector/folds/fold1/oof_images.parquet")
    assert (
        len(images) == (split["fold"] == 1).sum() * VIEWS
        and not images.duplicated(["image_id", "view"]).any()
    )
    # The same output files, with the same columns, as the single-process fold 0 above.
    for outputs in ("results/detector/folds", "models/detector"):
        single, distributed = (
            sorted(
                path.relative_to(project / outputs / f"fold{k}")
                for path in (project / outputs / f"fold{k}").rglob("*")
            )
            for k in (0, 1)
        )
        assert single and single == distributed, outputs
    for name in ("oof_boxes", "oof_images", "holdout_boxes", "holdout_images"):
        single, distributed = (
            pd.read_parquet(project / f"results/detector/folds/fold{k}/{name}.parquet")
            for k in (0, 1)
        )
        assert single.dtypes.to_dict() == distributed.dtypes.to_dict(), name
    assert not (project / "models/checkpoints/train_detector@1").exists()


def test_report_covers_every_fold(project):
    if not (project / "results/detector/folds/fold1/oof_boxes.parquet").exists():
        pytest.skip("needs the fold stages above")
    run_stage(project, *python("detector_report.py"))
    metrics = json.loads((project / "results/detector/metrics.json").read_text())
    assert {
        "oof_rsna_score",
        "holdout_rsna_score",
        "baseline",
        "folds",
        "oof_rsna_score_by_view",
    } <= set(metrics)
    assert (
        set(metrics["folds"]) == {"fold0", "fold1"}
        and len(metrics["oof_rsna_score_by_view"]) == VIEWS
    )
    assert (project / "results/detector/holdout.png").stat().st_size > 0


def test_a_bad_anchors_file_is_reported_by_its_key(project, tmp_path):
    anchors = project / "results/tuning/anchors.json"
    good = anchors.read_text()
    try:
        anchors.write_text(
            json.dumps(
                {"anchors": {"sizes": [16, 32, 64, 128, 256], "scales": [1.0], "ratios": []}}
            )
        )
        done = run_stage(project, *python("train_detector.py"), "--fold", "0", expect=2)
        assert "results/tuning/anchors.json.ratios: must list at least one value" in done.stderr
    finally:
        anchors.write_text(good)
