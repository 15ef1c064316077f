"""Optuna study helpers (storage, seeded TPE, pruning, resume, MLflow nesting), the anchor
search space, its budget and validation sample, the configured anchors as the score to beat,
and the stage through DVC (disabled, enabled, resumed)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from cxrdet.config import (
    AnchorParams,
    AnchorSearchParams,
    PrunerParams,
    StudyParams,
    TuneAnchorsParams,
    load_params,
)
from cxrdet.data.datasets import read_prepared
from cxrdet.data.folds import HOLDOUT
from cxrdet.errors import ConfigError
from cxrdet.models.anchors import best_possible_recall
from cxrdet.train.detector import detector_data
from cxrdet.tuning.anchors import (
    Budget,
    configured_trial,
    proxy_ids,
    suggest_anchors,
    trial_budget,
    tune_anchors,
    val_sample,
)
from cxrdet.tuning.study import (
    finished_trials,
    make_pruner,
    open_study,
    report_epoch,
    run_trials,
    study_name,
)

from worktree import copy_worktree

pytest_plugins = ["prepared_demo"]
ROOT = Path(__file__).resolve().parents[1]
STRIDES = (8, 16, 32, 64, 128)


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    return -((x - 1.0) ** 2)


def test_journal_study_resumes_and_counts_finished_trials(tmp_path):
    journal = tmp_path / "study.journal"
    study = open_study("s", StudyParams(seed=3), journal, make_pruner(PrunerParams(name="none"), 1))
    run_trials(study, quadratic, 3)
    assert finished_trials(study) == 3
    reopened = open_study(
        "s", StudyParams(seed=3), journal, make_pruner(PrunerParams(name="none"), 1)
    )
    run_trials(reopened, quadratic, 5)  # a resumed run adds only what is missing
    assert finished_trials(reopened) == 5
    run_trials(reopened, quadratic, 5)
    assert len(reopened.trials) == 5


def test_seeded_tpe_replays(tmp_path):
    suggested = []
    for run in range(2):
        study = open_study(
            "s",
            StudyParams(seed=11, startup_trials=2),
            tmp_path / f"{run}.journal",
            optuna.pruners.NopPruner(),
        )
        run_trials(study, quadratic, 4)
        suggested.append([t.params["x"] for t in study.trials])
    assert suggested[0] == suggested[1]


def test_study_names_follow_what_makes_trials_comparable():
    assert study_name("anchors", {"a": 1, "b": [2]}) == study_name("anchors", {"b": [2], "a": 1})
    assert study_name("anchors", {"a": 1}) != study_name("anchors", {"a": 2})


@pytest.mark.parametrize("name", ["median", "hyperband"])
def test_epoch_reports_prune_hopeless_trials(tmp_path, name):
    pruner = make_pruner(PrunerParams(name=name, startup_trials=1, warmup_epochs=0), max_epochs=3)
    study = open_study("p", StudyParams(seed=0, startup_trials=1), tmp_path / "p.journal", pruner)

    def objective(trial: optuna.Trial) -> float:
        level = 1.0 if trial.number < 3 else 0.0  # later trials are hopeless
        for epoch in range(1, 4):
            report_epoch(trial, level * epoch, epoch)
        return level * 3

    run_trials(study, objective, 6)
    states = [t.state for t in study.trials]
    assert states[:3] == [optuna.trial.TrialState.COMPLETE] * 3
    assert optuna.trial.TrialState.PRUNED in states[3:]


def test_a_report_only_trial_runs_all_its_epochs_however_low_it_scores(tmp_path):
    pruner = make_pruner(
        PrunerParams(name="median", startup_trials=1, warmup_epochs=0), max_epochs=3
    )
    study = open_study("r", StudyParams(seed=0), tmp_path / "r.journal", pruner)

    def objective(trial: optuna.Trial) -> float:
        level = 1.0 if trial.number == 0 else 0.0  # trial 1 is hopeless, trial 2 reports only
        for epoch in range(1, 4):
            report_epoch(trial, level * epoch, epoch, prune=trial.number != 2)
        return level * 3

    run_trials(study, objective, 3)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]


def test_trials_are_nested_mlflow_runs_tagged_with_their_state(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    study = open_study("n", StudyParams(seed=0), tmp_path / "n.journal", optuna.pruners.NopPruner())

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 1:
            raise optuna.TrialPruned("hopeless")
        return x

    try:
        with mlflow.start_run(run_name="study") as parent:
            run_trials(study, objective, 3, tags={"cxrdet.stage": "test"})
    finally:
        mlflow.set_tracking_uri(None)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        rows = db.execute(
            "SELECT r.name, r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'optuna.state' ORDER BY r.name"
        ).fetchall()
        parents = {
            v for (v,) in db.execute("SELECT value FROM tags WHERE key = 'mlflow.parentRunId'")
        }
    assert rows == [
        ("trial-0", "FINISHED", "COMPLETE"),
        ("trial-1", "FINISHED", "PRUNED"),
        ("trial-2", "FINISHED", "COMPLETE"),
    ]
    assert parents == {parent.info.run_id}


def test_search_space_builds_valid_anchor_sets():
    search = AnchorSearchParams()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        anchors, base = suggest_anchors(trial, search, STRIDES)
        anchors.check("anchors")
        assert len(anchors.sizes) == len(STRIDES) and anchors.sizes[0] == pytest.approx(base * 8)
        assert len(anchors.scales) == trial.params["scale_count"] and anchors.scales[0] == 1.0
        assert len(anchors.ratios) == trial.params["ratio_count"]
        assert 0 <= best_possible_recall(np.array([[12.0, 14.0]]), anchors.shapes()) <= 1
        study.tell(trial, 0.0)


def test_proxy_subset_is_fixed():
    ids = [f"i{k}" for k in range(10)]
    assert proxy_ids(ids, 0, 1) == ids
    assert proxy_ids(ids, 4, 1) == proxy_ids(ids, 4, 1) and len(proxy_ids(ids, 4, 1)) == 4


def test_configured_anchors_are_the_first_trial_when_the_space_holds_them():
    search = AnchorSearchParams()
    point = configured_trial(AnchorParams(base_size=2.0), search)  # 1, 1.26, 1.587 x 0.5, 1, 2
    study = optuna.create_study()
    study.enqueue_trial(point)
    anchors, _ = suggest_anchors(study.ask(), search, STRIDES)
    assert anchors.sizes[0] == 16.0 and anchors.ratios == (0.5, 1.0, 2.0)
    assert anchors.scales == pytest.approx((1.0, 1.26, 1.587), abs=1e-3)
    assert configured_trial(AnchorParams(base_size=20.0), search) is None  # outside the space
    assert configured_trial(AnchorParams(sizes=[8, 16, 32, 64, 128]), search) is None


def test_validation_sample_takes_whole_patients_drawn_by_the_seed():
    ids = [f"i{k}" for k in range(12)]
    patients = {image: f"p{k // 3}" for k, image in enumerate(ids)}  # 4 patients x 3 images
    sample = val_sample(ids, patients, 5, seed=0)
    assert len(sample) == 6 and sample == [i for i in ids if i in sample]  # 2 whole patients
    assert sample == val_sample(ids, patients, 5, seed=0)
    assert any(val_sample(ids, patients, 5, seed=seed) != sample for seed in range(1, 6))
    assert val_sample(ids, patients, 0, seed=0) == ids == val_sample(ids, patients, 12, seed=0)


def test_budget_runs_only_the_trials_that_fit_a_fraction_of_a_folds_training():
    tune = TuneAnchorsParams(trials=6, epochs=2, budget_fraction=0.2)
    # A fold: 10 epochs x 100 images = 1000 passes; a trial: 2 x 30 = 60; 20% holds 3.
    expected = Budget(fold_passes=1000, trial_passes=60, trials=3, fraction=0.18)
    assert trial_budget(tune, 10, 100, 30) == expected
    assert trial_budget(tune.model_copy(update={"budget_fraction": None}), 10, 100, 30).trials == 6
    with pytest.raises(ConfigError, match=r"tune_anchors\.budget_fraction: .* holds 1 proxy trial"):
        trial_budget(tune, 10, 100, 60)  # one trial of 120 passes: no tuned set besides


@pytest.mark.parametrize(
    "profile, images",  # images of the data the profile is sized for (its comment)
    [(None, None), ("rsna-gpu", 26_684), ("vinbigdata-gpu", 15_000), ("folder-gpu", 5_000)],
)
def test_params_and_profiles_keep_the_search_within_a_fifth_of_a_fold(profile, images):
    params = load_params(ROOT / "params.yaml", profile and ROOT / "profiles" / f"{profile}.yaml")
    split, tune = params.split, params.tune_anchors
    fold = (images or params.synthesize.rsna_images) * (1 - split.holdout_fraction)
    val = fold / split.folds
    trial = min(tune.subset or fold, fold - val) + min(tune.val_subset or val, val)
    budget = trial_budget(tune, params.detector.optim.epochs, round(fold), round(trial))
    assert tune.budget_fraction <= 0.2 and budget.trials == tune.trials and budget.fraction <= 0.2


def fake_training(score_of, calls: list, killed: bool = False):
    """train_detector without training: every epoch reports score_of(the model's anchors).
    killed: the process dies in its first trial (SystemExit passes through Optuna)."""

    def train(model, params, data, prepared, ids, val, runtime, checkpoints, *, on_epoch_end, **_):
        if killed:
            raise SystemExit("killed")
        score = score_of(model.config.anchors)
        calls.append((model.config.anchors, list(ids), list(val)))
        for epoch in range(1, params.optim.epochs + 1):
            on_epoch_end(epoch, {"val_rsna": score})
        return SimpleNamespace(best_score=score)

    return train


# Far beyond every box: best possible recall ~0, outside the search space (explicit sizes).
HOPELESS = AnchorParams(sizes=[300.0, 600.0, 1200.0, 2400.0, 4800.0], scales=[1.0], ratios=[1.0])


class AnchorStudy:
    """tune_anchors on the prepared demo's fold 0 with a fake training (configured anchors 0.5,
    any tuned set 0.505) inside an MLflow run; the study's journal stays in `tmp_path`."""

    def __init__(self, prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        params = load_params(ROOT / "params.yaml")
        self.detector = params.detector.model_copy(update={"weights": "none", "anchors": HOPELESS})
        self.prepared = read_prepared(prepared_root / "data/prepared/detect")
        split = pd.read_parquet(prepared_root / "data/split/folds.parquet")
        in_training = (split["fold"] != 0) & (split["fold"] != HOLDOUT)
        self.train = split.loc[in_training, "image_id"].tolist()
        self.val = split.loc[split["fold"] == 0, "image_id"].tolist()
        images = self.prepared.images
        patients = dict(zip(images["image_id"], images["patient_id"].astype(str)))
        self.sample = val_sample(self.val, patients, 5, seed=0)
        # A budget that holds 3 of the 6 trials asked for.
        self.trial = 2 * (6 + len(self.sample))
        self.fold = self.detector.optim.epochs * (len(self.train) + len(self.val))
        self.tune = params.tune_anchors.model_copy(
            update={
                "trials": 6,
                "epochs": 2,
                "subset": 6,
                "val_subset": 5,
                "min_bpr": 0.5,
                "budget_fraction": 3.5 * self.trial / self.fold,
                "pruner": PrunerParams(name="none"),
            }
        )
        self.tmp_path, self.monkeypatch, self.calls = tmp_path, monkeypatch, []

    def run(self, min_gain: float = 0.01, killed: bool = False):
        def score(anchors) -> float:
            return 0.5 if anchors.sizes == tuple(HOPELESS.sizes) else 0.505

        training = fake_training(score, self.calls, killed)
        self.monkeypatch.setattr("cxrdet.tuning.anchors.train_detector", training)
        tune = self.tune.model_copy(update={"min_gain": min_gain})
        mlflow.set_tracking_uri(f"sqlite:///{self.tmp_path / 'mlflow.db'}")
        try:
            with mlflow.start_run(run_name="tune_anchors"):
                data = detector_data(self.prepared, self.detector)
                return tune_anchors(
                    self.detector,
                    tune,
                    data,
                    self.prepared,
                    self.train,
                    self.val,
                    None,
                    self.tmp_path / "anchors.journal",
                    self.tmp_path,
                    False,
                )
        finally:
            mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("min_gain, keeps_configured", [(0.01, True), (0.004, False)])
def test_configured_anchors_train_first_and_stay_unless_beaten_by_min_gain(
    prepared_root, tmp_path, monkeypatch, min_gain, keeps_configured
):
    study = AnchorStudy(prepared_root, tmp_path, monkeypatch)
    result = study.run(min_gain)
    summary, calls = result.summary, study.calls
    # Trial 0 trained params' anchors exactly, although min_bpr would have pruned them.
    assert calls[0][0].sizes == tuple(HOPELESS.sizes) and summary["trials"]["complete"] >= 2
    assert sum(summary["trials"].values()) == summary["budget"]["trials"] == 3
    assert summary["configured_rsna"] == 0.5 and summary["best_rsna"] == 0.505
    assert summary["configured"] is keeps_configured
    assert not keeps_configured or summary["bpr"] < study.tune.min_bpr  # trained although hopeless
    assert (result.anchors.sizes == tuple(HOPELESS.sizes)) is keeps_configured
    # Every trial: the same training subset and the same whole-patient validation sample.
    assert all(ids == calls[0][1] and val == study.sample for _, ids, val in calls)
    assert len(calls[0][1]) == 6
    assert summary["val_images"] == len(study.sample)
    assert summary["budget"]["fraction"] == round(3 * study.trial / study.fold, 4)


def test_a_run_killed_in_the_configured_trial_trains_it_again_on_resume(
    prepared_root, tmp_path, monkeypatch
):
    study = AnchorStudy(prepared_root, tmp_path, monkeypatch)
    with pytest.raises(SystemExit):
        study.run(killed=True)  # trial 0 stays RUNNING in the journal
    summary = study.run().summary
    assert summary["configured_rsna"] == 0.5 and summary["best_rsna"] == 0.505
    assert summary["trials"]["complete"] == 4  # the budget's 3, then the configured anchors
    configured = [anchors.sizes == tuple(HOPELESS.sizes) for anchors, _, _ in study.calls]
    assert configured == [False, False, False, True]


def dvc(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"dvc {args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_stage_through_dvc_disabled_then_enabled_then_resumed(demo_raw, tmp_path):
    """`dvc repro tune_anchors` in a clone of the working tree: disabled it still writes every
    declared out; enabled it reports both scores; a forced rerun resumes the study it kept."""
    from prepared_demo import prepare_project  # a module pytest_plugins loads: imported late

    root = tmp_path / "clone"
    copy_worktree(ROOT, root)
    prepare_project(demo_raw, root, folds=2)
    (root / "models/pretrained").mkdir(parents=True)
    # models/pretrained is a dep of the stage; detector.weights none reads nothing from it
    (root / "models/pretrained/none.txt").write_text("detector.weights: none\n")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["split"]["folds"] = 2
    params["classifier"]["folds"] = params["detector"]["folds"] = [0, 1]
    params["train"] |= {"progress": False, "threads": 1}
    params["detector"] |= {"weights": "none", "frozen_bn": False, "freeze_encoder_epochs": 0}
    params["detector"]["optim"] |= {"batch_size": 4}
    params["tune_anchors"] |= {
        "enabled": False,
        "trials": 3,
        "epochs": 1,
        "subset": 8,
        "val_subset": 4,
        "min_bpr": 0.0,
        "budget_fraction": None,  # the demo's fraction holds no trial of this tiny fold's
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    env |= {"OMP_NUM_THREADS": "1"}
    env |= {
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in (("NAME", "t"), ("EMAIL", "t@t"))
    }
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run(["git", *command], cwd=root, env=env, capture_output=True, check=True)
    anchors, journal = root / "results/tuning/anchors.json", root / "results/tuning/anchors.journal"

    dvc(root, env, "repro", "--single-item", "tune_anchors")  # failed: the journal out was missing
    assert json.loads(anchors.read_text())["source"] == "params" and journal.read_bytes() == b""

    params["tune_anchors"]["enabled"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(root, env, "repro", "--single-item", "tune_anchors")
    tuned = json.loads(anchors.read_text())
    assert tuned["source"] == "tune_anchors" and sum(tuned["trials"].values()) == 3
    assert {"configured_rsna", "best_rsna"} <= set(tuned) and tuned["val_images"] >= 4
    with sqlite3.connect(root / "mlruns/mlflow.db") as db:
        logged = {
            key
            for (key,) in db.execute(
                "SELECT m.key FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                "WHERE r.name = 'tune_anchors'"
            )
        }
    assert {"configured.val.rsna", "best.val.rsna"} <= logged  # tracking/names.py
    study = journal.read_bytes()
    assert study

    # DVC keeps the journal (persist): a forced rerun resumes the finished study, no new trial.
    done = dvc(root, env, "repro", "--force", "--single-item", "tune_anchors")
    assert "anchor trial" not in done.stdout + done.stderr
    assert json.loads(anchors.read_text())["trials"] == tuned["trials"]
    params["tune_anchors"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(root, env, "repro", "--single-item", "tune_anchors")
    assert journal.read_bytes().startswith(study)  # switching off keeps the study for later
