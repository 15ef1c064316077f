"""Tuning stages scaled out on PostgreSQL: two workers of `tune_anchors` (the stage's own
script, real proxy trainings) and of `tune_ensemble` (synthetic cached predictions) share one
study in a real PostgreSQL server (`study.storage: postgresql://...`) while logging to an
MLflow server backed by PostgreSQL. One worker is killed mid-study and started again: the
study ends with distinct trial numbers, one best value and every trial's nested MLflow run
(the killed one's closed as KILLED by the restarted worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

pytest_plugins = ["postgres"]
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

ENSEMBLE_WORKER = """
import sys, time
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import cxrdet.tuning.ensemble as ensemble
from cxrdet.config import TuneEnsembleParams
from cxrdet.tracking.runs import stage_run
from test_tune_ensemble import POOR, bench

root, storage, trials = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
data = bench.synthetic_data(60, folds=3, views=("original", "hflip", "scale1.2"), seed=1)
score = ensemble.score_recipe


def paced(*args, **kwargs):
    time.sleep(0.3)  # the workers' trials interleave, and the kill lands inside a trial
    return score(*args, **kwargs)


ensemble.score_recipe = paced
tune = TuneEnsembleParams.model_validate(
    {"trials": trials, "study": {"seed": 3, "startup_trials": 4, "storage": storage}}
)
with stage_run("tune_ensemble", root=root, experiment="pg-tuning"):
    ensemble.tune_ensemble(data, POOR, tune, root / "unused.journal")
"""


def worker_env(tracking_url: str, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    return env | {
        "MLFLOW_TRACKING_URI": tracking_url,
        "CXRDET_ROOT": str(root),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }


def completed(storage: str) -> int:
    names = optuna.study.get_all_study_names(storage)
    if not names:
        return 0
    study = optuna.load_study(study_name=names[0], storage=storage)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def two_workers_one_killed(
    start: Callable[[], subprocess.Popen], storage: str, timeout: float = 1200
) -> None:
    """Start two workers at once; once the study has two completed trials, SIGKILL the first
    and start it again; both must then finish the study."""
    first, second = start(), start()
    deadline = time.monotonic() + timeout
    while completed(storage) < 2:
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no two trials completed"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    again = start()
    for worker in (second, again):
        _, err = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert worker.returncode == 0, err[-3000:]


def check_study(storage: str, tracking_url: str, trials: int) -> optuna.Study:
    """One study: distinct trial numbers, the finished ones as many as asked (one more when a
    worker was mid-trial as the other reached the count), one best value, every trial's MLflow
    run nested in a stage run, the trial left RUNNING by the killed worker closed as KILLED."""
    (name,) = optuna.study.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    every = study.get_trials(deepcopy=False)
    assert len({t.number for t in every}) == len(every)
    finished = [
        t
        for t in every
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert trials <= len(finished) <= trials + 1
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert study.best_value == max(t.value for t in complete)
    assert (
        next(t.number for t in complete if t.value == study.best_value) == study.best_trial.number
    )
    client = MlflowClient(tracking_uri=tracking_url)
    running = [t for t in every if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) <= 1  # the killed worker's trial, when the kill landed inside one
    parents = set()
    # A kill between the trial's creation and its nested run's start leaves a RUNNING trial with
    # no run to close; every finished trial has its run.
    killed_with_run = [t for t in running if "mlflow_run_id" in t.user_attrs]
    for trial in finished + killed_with_run:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["optuna.trial"] == str(trial.number)
        assert run.info.status == ("KILLED" if trial in running else "FINISHED")
        parents.add(run.data.tags["mlflow.parentRunId"])
    stages = {parent: client.get_run(parent).info.status for parent in parents}
    assert len(stages) >= 2 and set(stages.values()) <= {
        "FINISHED",
        "KILLED",
    }  # trials of both workers
    return study


def test_two_tune_ensemble_workers_share_a_postgresql_study(
    postgres_server, tracking_server, tmp_path
):
    storage = postgres_server.create_database("optuna_ensemble")
    env = worker_env(tracking_server, tmp_path)

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", ENSEMBLE_WORKER, str(TESTS), str(tmp_path), storage, "8"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    two_workers_one_killed(start, storage)
    study = check_study(storage, tracking_server, 8)
    assert study.trials[0].user_attrs.get("configured")  # the untuned recipe came first


def test_two_tune_anchors_stage_workers_share_a_postgresql_study(
    postgres_server, tracking_server, demo_raw, tmp_path
):
    """`python pipelines/tune_anchors.py` twice with study.storage in PostgreSQL, as the README
    tells users to scale the stage to several machines."""
    from prepared_demo import prepare_project

    project = prepare_project(demo_raw, tmp_path / "project", folds=2)
    storage = postgres_server.create_database("optuna_anchors")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"]["folds"] = 2
    params["classifier"]["folds"] = [0, 1]
    params["train"] |= {"progress": False, "threads": 1}
    params["detector"] |= {
        "weights": "none",
        "frozen_bn": False,
        "freeze_encoder_epochs": 0,
        "folds": [0, 1],
    }
    params["detector"]["optim"] |= {"batch_size": 4}
    params["tune_anchors"] |= {
        "trials": 6,
        "epochs": 1,
        "subset": 8,
        "val_subset": 4,
        "min_bpr": 0.0,
        "budget_fraction": None,
        "pruner": {"name": "none"},
    }
    params["tune_anchors"]["study"]["storage"] = storage.replace(
        "postgresql+psycopg://", "postgresql://"
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "models/pretrained").mkdir(parents=True)
    env = worker_env(tracking_server, project)

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "pipelines" / "tune_anchors.py")],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    two_workers_one_killed(start, storage)
    check_study(storage, tracking_server, 6)
    summary = json.loads((project / "results/tuning/anchors.json").read_text())
    assert summary["source"] == "tune_anchors" and summary["configured_rsna"] is not None
    assert not (project / "mlruns" / "mlflow.db").exists()  # everything went to the server
