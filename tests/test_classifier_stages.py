"""The classifier stages end to end on synthetic data: pretrain, train_classifier@<fold>
(also under torchrun with 2 CPU processes), classifier_report, and real learning."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cxrdet.data.sources.synthetic import DemoSpec, synthesize
from cxrdet.models.classifier import load_classifier

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VIEWS = 6  # tta.augmentations 1 -> 3 x 2 views


def tiny_params(folds: int, epochs: int, augmentations: int = 1) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"]["folds"] = folds
    params["train"] |= {"progress": False, "threads": 1}
    params["pretrain"]["image_size"] = 64
    params["pretrain"]["optim"] |= {"epochs": 2, "batch_size": 8}
    params["classifier"] |= {"folds": list(range(folds))}
    params["detector"] |= {
        "folds": list(range(folds))
    }  # every stage's folds must exist in the split
    for variant in params["classifier"]["variants"]:
        variant["image_size"] = 64
    params["classifier"]["optim"] |= {"epochs": epochs, "batch_size": 8}
    params["classifier"]["tta"] |= {"augmentations": augmentations, "batch_size": 4}
    return params


def run_stage(root: Path, *command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"CXRDET_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def python(script: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / script)]


def mlflow_runs(root: Path) -> list[tuple[str, dict[str, str]]]:
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        runs = db.execute("SELECT run_uuid, name FROM runs").fetchall()
        tags = db.execute("SELECT run_uuid, key, value FROM tags").fetchall()
    by_run: dict[str, dict[str, str]] = {uuid: {} for uuid, _ in runs}
    for uuid, key, value in tags:
        by_run[uuid][key] = value
    return [(name, by_run[uuid]) for uuid, name in runs]


@pytest.fixture(scope="module")
def project(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prepared_demo import prepare_project  # late: other test modules load it as a plugin

    root = prepare_project(demo_raw, tmp_path_factory.mktemp("project"), folds=2)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(folds=2, epochs=2)))
    run_stage(root, *python("pretrain.py"))
    return root


def test_pretrain_writes_a_backbone_per_classifier_backbone_and_label_aucs(project):
    content = torch.load(project / "models/pretrained/test_resnet.pt", weights_only=True)
    assert content["kind"] == "backbone" and content["config"]["source"] == "nih"
    metrics = json.loads((project / "results/pretrain/metrics.json").read_text())
    assert len(metrics["test_resnet"]["auc"]) == 15 and "Abnormal" in metrics["test_resnet"]["auc"]
    assert not (project / "models/checkpoints/pretrain").exists()  # removed once finished


def test_fold_stage_writes_models_per_view_predictions_metrics_and_mlflow_runs(project):
    run_stage(project, *python("train_classifier.py"), "--fold", "0")
    split = pd.read_parquet(project / "data/split/folds.parquet")
    oof = pd.read_parquet(project / "results/classifier/folds/fold0/oof.parquet")
    holdout = pd.read_parquet(project / "results/classifier/folds/fold0/holdout.parquet")
    assert list(oof.columns) == ["image_id", "fold", "model", "view", "opacity", "probs"]
    assert set(oof["image_id"]) == set(split.loc[split["fold"] == 0, "image_id"])
    assert set(holdout["image_id"]) == set(split.loc[split["fold"] == -1, "image_id"])
    assert len(oof) == (split["fold"] == 0).sum() * VIEWS * 2 and oof["view"].nunique() == VIEWS
    assert {len(p) for p in oof.loc[oof["model"] == "demo_label", "probs"]} == {3}
    metrics = json.loads((project / "results/classifier/folds/fold0/metrics.json").read_text())
    assert set(metrics["models"]) == {"demo_opacity", "demo_label"} and "oof_auc" in metrics
    assert (project / "results/classifier/folds/fold0/roc.png").stat().st_size > 0
    model, config = load_classifier(project / "models/classifier/fold0/demo_label.pt")
    assert config["class_names"][config["positive"][0]] == "Lung Opacity" and config["fold"] == 0

    runs = mlflow_runs(project)
    names = [name for name, _ in runs]
    assert names.count("train_classifier@0") == 1
    children = {tags["cxrdet.model"]: tags for name, tags in runs if name.endswith(" f0")}
    assert set(children) == {"demo_opacity", "demo_label"}
    assert {"demo_opacity f0", "demo_label f0"} <= set(names)  # the stage's name is the parent's
    data_hash = json.loads((project / "data/prepared/detect/dataset.json").read_text())["data_hash"]
    assert all(
        t["cxrdet.fold"] == "0" and t["cxrdet.data_hash"] == data_hash for t in children.values()
    )
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        steps = db.execute("SELECT DISTINCT step FROM metrics WHERE key = 'val.auc'").fetchall()
    assert sorted(step for (step,) in steps) == [1, 2]  # per-epoch metrics, step = epoch


def test_torchrun_two_cpu_processes_train_a_fold_and_only_rank_0_writes(project):
    before = mlflow_runs(project)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = run_stage(project, *torchrun, str(ROOT / "pipelines/train_classifier.py"), "--fold", "1")
    assert done.stdout.count("fold 1: out-of-fold AUC") == 1  # rank 0 alone reports
    new = [(name, tags) for name, tags in mlflow_runs(project) if (name, tags) not in before]
    assert sorted(name for name, _ in new) == [
        "demo_label f1",
        "demo_opacity f1",
        "train_classifier@1",
    ]
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        (world,) = db.execute(
            "SELECT value FROM params WHERE key = 'world_size'"
            " AND run_uuid IN (SELECT run_uuid FROM runs WHERE name = 'train_classifier@1')"
        ).fetchone()
    assert world == "2"
    split = pd.read_parquet(project / "data/split/folds.parquet")
    oof = pd.read_parquet(project / "results/classifier/folds/fold1/oof.parquet")
    assert (
        len(oof) == (split["fold"] == 1).sum() * VIEWS * 2
    )  # each image and view once: no shard twice
    assert not oof.duplicated(["image_id", "model", "view"]).any()
    assert not list(project.rglob("*.partial"))


def test_report_covers_every_fold(project):
    if not (project / "results/classifier/folds/fold1/oof.parquet").exists():
        pytest.skip("needs the fold stages above")
    run_stage(project, *python("classifier_report.py"))
    metrics = json.loads((project / "results/classifier/metrics.json").read_text())
    split = pd.read_parquet(project / "data/split/folds.parquet")
    assert metrics["n_oof_images"] == (split["fold"] >= 0).sum() and metrics["views"] == VIEWS
    assert {"oof_auc", "oof_auc_original", "holdout_auc"} <= set(metrics)
    assert (project / "results/classifier/roc.png").exists()


def test_pretrain_reports_a_bad_weights_file_by_its_param(project, tmp_path):
    root = tmp_path / "import"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns("mlruns", "models", "results"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"] |= {"source": "file", "weights": {"test_resnet": "models/imported/nih.pt"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "models/imported").mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(1)}, root / "models/imported/nih.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "CXRDET_ROOT": str(root)
    }
    done = subprocess.run(python("pretrain.py"), cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert (
        "pretrain: error: pretrain.weights.test_resnet: " in done.stderr
        and "missing keys" in done.stderr
    )


def test_out_of_fold_auc_shows_real_learning(tmp_path):
    """The demo recipe (params.yaml) on the demo's amount of data, fixed seeds: NIH-style
    pretraining, then the 2-class classifier on every fold, TTA views averaged."""
    from cxrdet.config import load_params
    from cxrdet.data.datasets import read_prepared
    from cxrdet.models.backbone import save_backbone
    from cxrdet.runtime.session import start_runtime
    from cxrdet.train.classifier import (
        predict_classifier_views,
        pretrain_backbone,
        train_fold_classifier,
    )
    from cxrdet.train.predictions import opacity_auc, opacity_truth

    from prepared_demo import prepare_project

    demo = load_params(ROOT / "params.yaml").synthesize  # the demo's RSNA and NIH data
    spec = DemoSpec(
        seed=demo.seed,
        image_size=demo.image_size,
        rsna_images=demo.rsna_images,
        vinbigdata_images=8,
        nih_images=demo.nih_images,
        folder_images=4,
    )
    synthesize(tmp_path / "raw", spec, progress=False)
    root = prepare_project(tmp_path / "raw", tmp_path / "project", folds=4, image_size=128)
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(
        update={
            "train": params.train.model_copy(update={"progress": False}),
            "classifier": params.classifier.model_copy(
                update={"tta": params.classifier.tta.model_copy(update={"augmentations": 1})}
            ),
        }
    )
    runtime = start_runtime(params.train)
    (variant,) = [v for v in params.classifier.variants if v.target == "opacity"]
    model, _ = pretrain_backbone(
        variant.backbone,
        read_prepared(root / "data/prepared/pretrain"),
        params.pretrain,
        runtime,
        tmp_path / "ck/pretrain",
        "classifier.variants.0.backbone",
    )
    pretrained = tmp_path / "pretrained.pt"
    save_backbone(pretrained, model.backbone, variant.backbone)

    prepared = read_prepared(root / "data/prepared/detect")
    split = pd.read_parquet(root / "data/split/folds.parquet")
    tables = []
    for fold in range(4):
        trained = train_fold_classifier(
            variant,
            "classifier.variants.0",
            fold,
            prepared,
            split,
            params.classifier,
            pretrained,
            runtime,
            tmp_path / f"ck/{fold}",
        )
        ids = split.loc[split["fold"] == fold, "image_id"].to_numpy()
        tables.append(predict_classifier_views(trained, prepared, ids, params.classifier, runtime))
    auc = opacity_auc(pd.concat(tables), opacity_truth(prepared.images, prepared.boxes))
    assert auc > 0.75, auc
