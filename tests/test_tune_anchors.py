"""Optuna study helpers (storage, seeded TPE, pruning, resume, MLflow nesting) and the anchor
search space."""

from __future__ import annotations

import sqlite3

import mlflow
import numpy as np
import optuna
import pytest

from cxrdet.config import AnchorParams, AnchorSearchParams, PrunerParams, StudyParams
from cxrdet.models.anchors import best_possible_recall
from cxrdet.tuning.anchors import configured_trial, proxy_ids, suggest_anchors
from cxrdet.tuning.study import (
    finished_trials,
    make_pruner,
    open_study,
    report_epoch,
    run_trials,
    study_name,
)

STRIDES = (8, 16, 32, 64, 128)


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    return -(x - 1.0) ** 2


def test_journal_study_resumes_and_counts_finished_trials(tmp_path):
    journal = tmp_path / "study.journal"
    study = open_study("s", StudyParams(seed=3), journal, make_pruner(PrunerParams(name="none"), 1))
    run_trials(study, quadratic, 3)
    assert finished_trials(study) == 3
    reopened = open_study("s", StudyParams(seed=3), journal, make_pruner(PrunerParams(name="none"), 1))
    run_trials(reopened, quadratic, 5)  # a resumed run adds only what is missing
    assert finished_trials(reopened) == 5
    run_trials(reopened, quadratic, 5)
    assert len(reopened.trials) == 5


def test_seeded_tpe_replays(tmp_path):
    suggested = []
    for run in range(2):
        study = open_study("s", StudyParams(seed=11, startup_trials=2), tmp_path / f"{run}.journal", optuna.pruners.NopPruner())
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
        parents = {v for (v,) in db.execute("SELECT value FROM tags WHERE key = 'mlflow.parentRunId'")}
    assert rows == [("trial-0", "FINISHED", "COMPLETE"), ("trial-1", "FINISHED", "PRUNED"), ("trial-2", "FINISHED", "COMPLETE")]
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
