"""The final detector (params' detector_final, stage train_detector_final): its epochs, the
predictor's choice of detectors, the ablation without fold models; and, slow, the stage chain
under `dvc repro` in a temporary clone, disabled then enabled: the marker, then a real final
training whose holdout predictions evaluate, register and `cxrdet predict` use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrdet.config import OptimParams, ScheduleParams, load_params
from cxrdet.data.cache import SETTINGS_FILE
from cxrdet.ensemble import EnsembleRecipe, Gating, MemberPredictions
from cxrdet.errors import CxrdetError
from cxrdet.evaluation import Holdout, ablations
from cxrdet.infer.detector_tta import BOX_COLUMNS, FINAL_FOLD
from cxrdet.infer.predictor import FINAL_MARKER, project_spec
from cxrdet.paths import DETECTOR_FINAL_MODELS
from cxrdet.train.detector import final_epochs, fold_best_epochs

from worktree import copy_worktree

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fast


def test_final_epochs_follow_the_folds_only_where_validation_steered_them():
    fixed = OptimParams(epochs=10, schedule=ScheduleParams(name="cosine"))
    assert final_epochs(fixed, [4, 5, 9]) == 10  # a fixed schedule: the folds' curve, all of it
    assert final_epochs(fixed, [4, 5, 9], epochs=3) == 3  # detector_final.epochs wins
    stopped = OptimParams(epochs=10, patience=2)
    assert final_epochs(stopped, [4, 5, 9]) == 6  # mean 6.0
    assert final_epochs(stopped, [4, 5]) == 5  # mean 4.5, rounded up
    plateau = OptimParams(epochs=12, schedule=ScheduleParams(name="plateau"))
    assert final_epochs(plateau, [7, 0, 8]) == 8  # 0: no finite score, not counted
    assert final_epochs(plateau, [0, 0]) == 12


def test_fold_best_epochs_are_read_per_model_and_a_missing_fold_names_its_stage(tmp_path):
    for fold, epoch in ((0, 3), (1, 5)):
        (tmp_path / f"fold{fold}").mkdir()
        (tmp_path / f"fold{fold}/metrics.json").write_text(
            json.dumps({"models": {"retinanet": {"best_epoch": epoch}}})
        )
    assert fold_best_epochs(tmp_path, [0, 1], "retinanet") == [3, 5]
    with pytest.raises(CxrdetError, match="no best epoch of 'two_stage'"):
        fold_best_epochs(tmp_path, [0], "two_stage")
    with pytest.raises(
        CxrdetError, match="fold2/metrics.json: not found; run `dvc repro train_detector`"
    ):
        fold_best_epochs(tmp_path, [2], "retinanet")


def spec_project(root: Path, enabled: bool, families: list[str]) -> Path:
    """What project_spec reads, the model files as empty stand-ins."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["detector"]["families"] = families
    params["detector_final"]["enabled"] = enabled
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = root / "data/prepared/detect"
    (prepared / "cache").mkdir(parents=True)
    (prepared / "cache" / SETTINGS_FILE).write_text(
        json.dumps({"size": 128, "low_percentile": 0.5, "high_percentile": 99.5})
    )
    (prepared / "dataset.json").write_text(
        json.dumps({"format": "rsna", "class_names": ["opacity"]})
    )
    (root / "results/tuning").mkdir(parents=True)
    (root / "results/tuning/ensemble.json").write_text(
        json.dumps({"recipe": {}, "source": "params"})
    )
    return root


def test_project_spec_lists_the_final_models_when_enabled_else_the_fold_models(tmp_path):
    root = spec_project(tmp_path, enabled=True, families=["retinanet", "two_stage"])
    with pytest.raises(CxrdetError, match="run `dvc repro train_detector_final`"):
        project_spec(root)  # enabled, nothing trained yet
    final = root / DETECTOR_FINAL_MODELS
    final.mkdir(parents=True)
    (final / FINAL_MARKER).write_text(json.dumps({"enabled": False}))  # written by a disabled run
    for name in ("model.pt", "two_stage.pt"):
        (final / name).write_bytes(b"")
    with pytest.raises(CxrdetError, match="are not trained"):
        project_spec(root)
    (final / FINAL_MARKER).write_text(json.dumps({"enabled": True}))
    assert project_spec(root).detectors == [
        f"{DETECTOR_FINAL_MODELS}/model.pt",
        f"{DETECTOR_FINAL_MODELS}/two_stage.pt",
    ]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["detector_final"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    folds = load_params(ROOT / "params.yaml").detector.folds
    assert project_spec(root).detectors == [
        f"models/detector/fold{k}/{name}" for k in folds for name in ("model.pt", "two_stage.pt")
    ]


def test_ablation_of_final_detectors_has_no_fold_entries_and_scores_them_alone():
    ids = ["a", "b"]
    views = ["original", "hflip"]
    boxes = pd.DataFrame(
        [
            (i, FINAL_FOLD, "retinanet", v, 10.0, 10.0, 20.0, 20.0, 0.9, 0)
            for i in ids
            for v in views
        ],
        columns=BOX_COLUMNS,
    )
    images = pd.DataFrame(
        [(i, FINAL_FOLD, "retinanet", v) for i in ids for v in views],
        columns=["image_id", "fold", "model", "view"],
    )
    classifier = pd.DataFrame(
        [(i, k, "demo", "original", 0.5, np.array([0.5, 0.5])) for i in ids for k in (0, 1)],
        columns=["image_id", "fold", "model", "view", "opacity", "probs"],
    )
    sizes = pd.DataFrame({"image_id": ids, "width": 100, "height": 100})
    truth = pd.DataFrame(
        {"image_id": ["a"], "x": [10.0], "y": [10.0], "w": [20.0], "h": [20.0], "class_id": [0]}
    )
    holdout = Holdout(MemberPredictions(boxes, images, classifier, sizes), truth, ids, "rsna", {})
    recipe = EnsembleRecipe(gating=Gating("none", {}), shrink=1.0, score_threshold=0.0)
    table = ablations(holdout, recipe)
    assert not [name for name in table if name.startswith("fold")]
    assert table["ensemble"]["n_boxes"] == 2 and table["ensemble"]["score"] is not None


# ---------------------------------------------------------------- slow: the stage chain under DVC


def dvc(root: Path, env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["dvc", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"dvc {args}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def set_params(root: Path, change) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    change(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def clone(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The working tree in a fresh git repository with everything upstream of the final stage
    written directly (prepared demo data, split, anchors, untrained fold models and their
    tables)."""
    from cxrdet.data.datasets import read_prepared
    from cxrdet.io import write_json
    from cxrdet.train.detector import detector_data, seeded_family
    from test_ensemble_stages import tiny_params, write_fold_outputs

    from prepared_demo import prepare_project

    root = tmp_path_factory.mktemp("final")
    copy_worktree(ROOT, root)
    shutil.copytree(demo_raw, root / "data/raw/demo", dirs_exist_ok=True)
    prepare_project(root / "data/raw/demo", root, folds=2)
    params = tiny_params(Path("data/raw/demo/rsna"))
    params["detector"]["optim"] |= {"epochs": 2, "batch_size": 4}
    params["detector_final"] = {"enabled": False, "epochs": None}
    params["tune_ensemble"] |= {"trials": 3}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    write_fold_outputs(root)
    loaded = load_params(root / "params.yaml")
    for fold in loaded.detector.folds:  # what train_detector@<fold> reports
        write_json(
            {"models": {loaded.detector.name: {"best_epoch": 2}}},
            root / f"results/detector/folds/fold{fold}/metrics.json",
        )
    data = detector_data(read_prepared(root / "data/prepared/detect"), loaded.detector)
    write_json(
        {
            "anchors": seeded_family(loaded.detector, data, "retinanet").config.anchors.to_dict(),
            "source": "params",
        },
        root / "results/tuning/anchors.json",
    )
    (root / "models/pretrained").mkdir(parents=True, exist_ok=True)
    (root / "models/pretrained/README").write_text("detector.weights: none\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "OMP_NUM_THREADS": "1",
    }
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "snapshot"],
    ):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    return root, env


@pytest.mark.slow
def test_disabled_then_enabled_final_detector_through_evaluate_register_and_predict(
    clone, demo_raw, tmp_path
):
    from cxrdet.data.datasets import read_prepared
    from cxrdet.data.folds import HOLDOUT
    from cxrdet.ensemble import apply_recipe
    from cxrdet.infer.predictor import EnsemblePredictor, save_bundle
    from cxrdet.models.retinanet import load_detector
    from cxrdet.serving.check import box_difference, submission_boxes
    from test_ensemble_stages import cxrdet, run

    root, env = clone
    final, results = root / DETECTOR_FINAL_MODELS, root / "results/detector/final"
    # Disabled (the demo's default): the stage runs and writes only the marker and empty tables.
    dvc(root, env, "repro", "--single-item", "train_detector_final")
    assert json.loads((final / FINAL_MARKER).read_text()) == {"enabled": False}
    assert sorted(p.name for p in final.iterdir()) == [FINAL_MARKER]
    empty = pd.read_parquet(results / "holdout_boxes.parquet")
    assert list(empty.columns) == BOX_COLUMNS and empty.empty
    dvc(root, env, "repro", "--single-item", "tune_ensemble")
    dvc(root, env, "repro", "--single-item", "evaluate")
    assert json.loads((root / "results/evaluate/metrics.json").read_text())["detectors"] == "folds"
    by_folds = (root / "results/evaluate/submission.csv").read_text()

    # Enabled: the final model trains; tuning stays on the out-of-fold predictions (not
    # invalidated).
    set_params(root, lambda p: p["detector_final"].update(enabled=True))
    status = json.loads(dvc(root, env, "status", "--json").stdout)
    assert (
        "train_detector_final" in status and "evaluate" in status and "tune_ensemble" not in status
    )
    dvc(root, env, "repro", "--single-item", "train_detector_final")
    model, config = load_detector(final / "model.pt")
    assert config["fold"] == FINAL_FOLD and config["epochs"] == 2 and "best_epoch" not in config
    metrics = json.loads((results / "metrics.json").read_text())
    split = pd.read_parquet(root / "data/split/folds.parquet")
    holdout = split.loc[split["fold"] == HOLDOUT, "image_id"].tolist()
    assert (
        metrics["enabled"]
        and metrics["n_train"] == len(split) - len(holdout)
        and metrics["models"]["retinanet"]["epochs"] == 2
    )
    boxes = pd.read_parquet(results / "holdout_boxes.parquet")
    images = pd.read_parquet(results / "holdout_images.parquet")
    assert list(boxes.columns) == BOX_COLUMNS and len(boxes) and (boxes["fold"] == FINAL_FOLD).all()
    assert set(images["image_id"]) == set(holdout) and (images["fold"] == FINAL_FOLD).all()
    assert not (root / "models/checkpoints/train_detector_final").exists()
    dvc(root, env, "repro", "--single-item", "detector_report")  # the final model beside the folds
    assert (
        0.0
        <= json.loads((root / "results/detector/metrics.json").read_text())["final"][
            "holdout_rsna_score"
        ]
        <= 1.0
    )

    dvc(root, env, "repro", "--single-item", "evaluate")
    evaluated = json.loads((root / "results/evaluate/metrics.json").read_text())
    assert evaluated["detectors"] == "final" and not [
        k for k in evaluated["ablation"] if k.startswith("fold")
    ]
    # Evaluate's submission is the tuned recipe on the final model's holdout boxes (one model per
    # image: no fold fusion) gated by the fold classifiers, and not the fold ensemble's.
    spec = project_spec(root)
    assert spec.detectors == [f"{DETECTOR_FINAL_MODELS}/model.pt"]
    predictor = EnsemblePredictor(spec, root)
    prepared = read_prepared(root / "data/prepared/detect")
    classifier = pd.concat(
        [
            pd.read_parquet(root / f"results/classifier/folds/fold{k}/holdout.parquet")
            for k in (0, 1)
        ]
    )
    sizes = prepared.images[prepared.images["image_id"].isin(holdout)][
        ["image_id", "width", "height"]
    ]
    recipe = EnsembleRecipe.from_dict(
        json.loads((root / "results/tuning/ensemble.json").read_text())["recipe"]
    )
    expected = apply_recipe(
        MemberPredictions(boxes, images, classifier, sizes), recipe, predictor.class_names
    ).boxes
    submitted = submission_boxes(
        root / "results/evaluate/submission.csv", "rsna", ["opacity"], holdout
    )
    assert box_difference(submitted, expected[submitted.columns]) is None
    assert (root / "results/evaluate/submission.csv").read_text() != by_folds

    # Register logs and checks the final bundle; `cxrdet predict` from the project uses it too.
    dvc(root, env, "repro", "--single-item", "register", timeout=1200)
    assert (
        json.loads((root / "results/register/register.json").read_text())["tags"][
            "cxrdet.detectors"
        ]
        == "final"
    )
    inputs = tmp_path / "images"
    inputs.mkdir()
    for path in sorted((demo_raw / "rsna/stage_2_train_images").glob("*.dcm"))[:2]:
        shutil.copy(path, inputs / path.name)
    run(
        root,
        *cxrdet(
            "predict",
            "--run-dir",
            str(root),
            "--input",
            str(inputs),
            "--out",
            str(tmp_path / "a.csv"),
        ),
    )
    bundle = save_bundle(spec, root, tmp_path / "model")
    assert (bundle / "detector/final/model.pt").is_file()
    run(
        root,
        *cxrdet(
            "predict",
            "--model",
            str(bundle),
            "--input",
            str(inputs),
            "--out",
            str(tmp_path / "b.csv"),
        ),
    )
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
