"""The ensemble stages end to end on a small project whose fold models are untrained (the
stages' mechanics, not learning, are under test): tune_ensemble (Optuna, nested MLflow
trial runs, resume), evaluate (its numbers equal `cxrdet evaluate` on the submission it
wrote), the predictor's raw-image path equal to the cached path the stages used, and
`cxrdet predict` on demo DICOMs, from the project and from a saved model directory."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrdet.config import load_params
from cxrdet.data.datasets import read_prepared
from cxrdet.data.folds import HOLDOUT
from cxrdet.infer.predictor import EnsemblePredictor, project_spec, save_bundle
from cxrdet.io import write_parquet
from cxrdet.models.classifier import build_classifier, save_classifier
from cxrdet.models.retinanet import decode_config, save_detector
from cxrdet.runtime.session import start_runtime
from cxrdet.submission import read_rsna_submission
from cxrdet.train.classifier import FoldClassifier, classification_targets, predict_classifier_views
from cxrdet.train.detector import detector_data, predict_detector, seeded_family

from prepared_demo import prepare_project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def tiny_params(raw_dir: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["detect"]["raw_dir"] = str(raw_dir)
    params["split"]["folds"] = 2
    params["train"] |= {"progress": False, "threads": 1}
    params["classifier"]["folds"] = [0, 1]
    params["classifier"]["tta"] |= {"augmentations": 1}
    for variant in params["classifier"]["variants"]:
        variant["image_size"] = 64
    # write_fold_outputs writes the RetinaNet's (tests/test_two_stage_ensemble.py: both families)
    params["detector"] |= {
        "folds": [0, 1],
        "weights": "none",
        "image_size": 128,
        "families": ["retinanet"],
    }
    params["detector"]["decode"] |= {
        "score_floor": 0.0
    }  # untrained heads score ~0.01: keep their boxes
    params["detector"]["tta"] |= {"hflip": True, "scales": [1.0]}
    # Untrained models: a gate or a cut would leave nothing to score.
    params["ensemble"]["gating"]["rule"] = "none"
    params["ensemble"]["score_threshold"] = 0.0
    params["tune_ensemble"] |= {"trials": 5}
    params["tune_ensemble"]["search"] |= {
        "score_threshold": {"low": 0.0, "high": 0.005},
        "gating": ["none", "product"],
        "gate_threshold": {"low": 0.0, "high": 0.001},
    }
    return params


def write_fold_outputs(root: Path) -> None:
    """What train_classifier@k and train_detector@k write, from untrained models."""
    params = load_params(root / "params.yaml")
    prepared = read_prepared(root / "data/prepared/detect")
    split = pd.read_parquet(root / "data/split/folds.parquet")
    runtime = start_runtime(params.train)
    data = detector_data(prepared, params.detector)
    for fold in params.detector.folds:
        ids = {
            "oof": split.loc[split["fold"] == fold, "image_id"].to_numpy(),
            "holdout": split.loc[split["fold"] == HOLDOUT, "image_id"].to_numpy(),
        }
        tables: dict[str, list[pd.DataFrame]] = {"oof": [], "holdout": []}
        for variant in params.classifier.variants:
            targets = classification_targets(prepared, variant.target, "variant")
            config = {
                "backbone": variant.backbone,
                "num_classes": len(targets.class_names),
                "drop_rate": 0.0,
                "variant": variant.name,
                "fold": fold,
                "target": variant.target,
                "image_size": variant.image_size,
                "class_names": targets.class_names,
                "positive": targets.positive,
            }
            model = build_classifier(variant.backbone, len(targets.class_names))
            save_classifier(root / f"models/classifier/fold{fold}/{variant.name}.pt", model, config)
            for part in tables:
                tables[part].append(
                    predict_classifier_views(
                        FoldClassifier(model, config, None),
                        prepared,
                        ids[part],
                        params.classifier,
                        runtime,
                    )
                )
        for part, frames in tables.items():
            write_parquet(
                pd.concat(frames, ignore_index=True),
                root / f"results/classifier/folds/fold{fold}/{part}.parquet",
            )
        detector = seeded_family(params.detector, data, "retinanet")
        config = {
            "fold": fold,
            "name": params.detector.name,
            "image_size": params.detector.image_size,
            "class_names": data.class_names,
            "image_class_names": data.image_class_names,
            "positive": data.positive,
            "decode": decode_config(params.detector).__dict__,
        }
        save_detector(root / f"models/detector/fold{fold}/model.pt", detector, config)
        for part in tables:
            boxes, images = predict_detector(
                detector, params.detector, data, prepared, ids[part], runtime, fold
            )
            write_parquet(boxes, root / f"results/detector/folds/fold{fold}/{part}_boxes.parquet")
            write_parquet(images, root / f"results/detector/folds/fold{fold}/{part}_images.parquet")


def run(root: Path, *command: str, expect: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"CXRDET_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == expect, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def stage(script: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / script)]


def cxrdet(*args: str) -> list[str]:
    return [sys.executable, "-m", "cxrdet.cli", *args]


@pytest.fixture(scope="module")
def project(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = prepare_project(demo_raw, tmp_path_factory.mktemp("ensemble"), folds=2)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(demo_raw / "rsna")))
    write_fold_outputs(root)
    run(root, *stage("tune_ensemble.py"))
    run(root, *stage("evaluate.py"))
    return root


def test_tune_ensemble_writes_the_recipe_plots_and_nested_trial_runs(project):
    tuned = json.loads((project / "results/tuning/ensemble.json").read_text())
    assert {"recipe", "source", "metric", "rsna_score", "untuned", "trials"} <= set(tuned)
    assert (
        tuned["objective"] == "rsna" and tuned["metric"] == "rsna_score"
    )  # tune_ensemble.objective auto, RSNA data
    assert tuned["rsna_score"] >= tuned["untuned"]["rsna_score"]
    for name in (
        "ensemble_study.html",
        "ensemble_history.png",
        "ensemble_importances.png",
        "ensemble_parallel.png",
    ):
        assert (project / "results/tuning" / name).stat().st_size > 0
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        (parent,) = db.execute("SELECT run_uuid FROM runs WHERE name = 'tune_ensemble'").fetchall()
        children = db.execute(
            "SELECT COUNT(*) FROM tags WHERE key = 'mlflow.parentRunId' AND value = ?", parent
        ).fetchone()[0]
        logged = dict(
            db.execute("SELECT key, value FROM params WHERE run_uuid = ?", parent).fetchall()
        )
    assert children == 5
    assert logged["objective"] == "rsna" and logged["tune_ensemble.objective"] == "auto"
    run(project, *stage("tune_ensemble.py"))  # resumes the finished study: no new trial
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        assert (
            db.execute("SELECT COUNT(*) FROM runs WHERE name LIKE 'ens-trial-%'").fetchone()[0] == 5
        )


def test_evaluate_numbers_equal_cxrdet_evaluate_on_its_submission(project):
    out = project / "results/evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"rsna_score", "map40", "auc", "ablation", "evaluate_command"} <= set(metrics)
    assert (
        metrics["objective"] == "rsna" and metrics["metric"] == "rsna_score"
    )  # what tune_ensemble maximised
    assert {
        "ensemble",
        "fold0",
        "fold1",
        "no_tta",
        "no_gating",
        "no_shrink",
        "fusion_vote",
        "fusion_wbf",
        "fusion_nms",
        "fusion_soft_nms",
        "fusion_soft_nms_linear",
        "untuned",
    } <= set(metrics["ablation"])
    assert metrics["ablation"]["ensemble"]["score"] == metrics["rsna_score"]
    command = metrics["evaluate_command"].split()
    assert command[:2] == ["cxrdet", "evaluate"]
    report = json.loads(run(project, *cxrdet(*command[1:], "--json")).stdout)
    assert report["score"] == metrics["rsna_score"] and report["n_images"] > 0
    for name in ("threshold.csv", "pr.csv", "threshold.png", "pr.png", "roc.png", "overlay.png"):
        assert (out / name).stat().st_size > 0


def test_predictor_reads_raw_files_exactly_as_prepare_cached_them(project):
    predictor = EnsemblePredictor(project_spec(project), project)
    prepared = read_prepared(project / "data/prepared/detect")
    split = pd.read_parquet(project / "data/split/folds.parquet")
    ids = split.loc[split["fold"] == HOLDOUT, "image_id"].tolist()
    raw = Path(load_params(project / "params.yaml").data.detect.raw_dir)
    loaded = predictor.load_images(
        [raw / p for p in prepared.images.set_index("image_id").loc[ids, "path"]], ids
    )
    members = predictor.predict_members(loaded)
    for k in (0, 1):
        cached = pd.read_parquet(project / f"results/detector/folds/fold{k}/holdout_boxes.parquet")
        served = members.boxes[members.boxes["fold"] == k]
        key = ["image_id", "view", "score"]
        cached, served = (t.sort_values(key).reset_index(drop=True) for t in (cached, served))
        np.testing.assert_allclose(
            served[["x", "y", "w", "h", "score"]], cached[["x", "y", "w", "h", "score"]], atol=1e-4
        )
        stored = pd.read_parquet(project / f"results/classifier/folds/fold{k}/holdout.parquet")
        again = members.classifier[members.classifier["fold"] == k]
        np.testing.assert_allclose(
            again["opacity"].to_numpy(), stored["opacity"].to_numpy(), atol=1e-5
        )


def test_predict_cli_on_demo_dicoms_from_the_project_and_a_model_directory(
    project, demo_raw, tmp_path
):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((demo_raw / "rsna/stage_2_train_images").glob("*.dcm"))[:3]:
        shutil.copy(path, images / path.name)
    done = run(
        project,
        *cxrdet(
            "predict",
            "--run-dir",
            str(project),
            "--input",
            str(images),
            "--out",
            str(tmp_path / "a.csv"),
        ),
    )
    assert "3 images" in done.stderr
    submission = read_rsna_submission(tmp_path / "a.csv")
    assert sorted(submission.image_ids) == sorted(p.stem for p in images.iterdir())
    bundle = save_bundle(project_spec(project), project, tmp_path / "model")
    run(
        project,
        *cxrdet(
            "predict",
            "--model",
            str(bundle),
            "--input",
            str(images),
            "--format",
            "rsna",
            "--out",
            str(tmp_path / "b.csv"),
        ),
    )
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_predict_cli_names_the_bad_file_or_folder(project, tmp_path):
    images = tmp_path / "bad"
    images.mkdir()
    (images / "broken.dcm").write_bytes(b"not a dicom file")
    done = run(
        project,
        *cxrdet(
            "predict",
            "--run-dir",
            str(project),
            "--input",
            str(images),
            "--out",
            str(tmp_path / "x.csv"),
        ),
        expect=2,
    )
    assert "broken.dcm" in done.stderr and not (tmp_path / "x.csv").exists()
    done = run(
        project,
        *cxrdet(
            "predict",
            "--run-dir",
            str(tmp_path),
            "--input",
            str(images),
            "--out",
            str(tmp_path / "x.csv"),
        ),
        expect=2,
    )
    assert "neither a model directory" in done.stderr
    done = run(
        project,
        *cxrdet("predict", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "x.csv")),
        expect=2,
    )
    assert "input folder not found" in done.stderr
