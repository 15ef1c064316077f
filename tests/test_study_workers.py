"""Scale-out of a tuning stage: worker processes share one Optuna study through the
journal file, as `python pipelines/tune_<x>.py` started several times does; a database
storage's URL and errors (the same on PostgreSQL: test_postgres_tuning.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from cxrdet.config import PrunerParams, StudyParams
from cxrdet.errors import CxrdetError
from cxrdet.tuning.study import FINISHED, make_pruner, open_study, storage_url

TRIALS = 12
WORKER = """
import sys, time
from pathlib import Path
from cxrdet.config import PrunerParams, StudyParams
from cxrdet.tuning.study import make_pruner, open_study, run_trials

def objective(trial):
    x = trial.suggest_float("x", -2.0, 2.0)
    trial.set_user_attr("worker", sys.argv[2])
    time.sleep(0.5)  # long enough for the two workers' trials to interleave
    return -(x - 0.5) ** 2

study = open_study(
    "shared",
    StudyParams(seed=int(sys.argv[2]), startup_trials=4),
    Path(sys.argv[1]),
    make_pruner(PrunerParams(name="none"), 1),
)
run_trials(study, objective, int(sys.argv[3]))
"""


def test_two_workers_share_one_journal_study_without_duplicate_trials(tmp_path):
    journal = tmp_path / "study.journal"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(journal), str(seed), str(TRIALS)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()
    study = open_study("shared", StudyParams(), journal, make_pruner(PrunerParams(name="none"), 1))
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    numbers = [trial.number for trial in trials]
    assert len(set(numbers)) == len(numbers)
    # Each worker stops once the study has TRIALS finished trials; the other may be mid-trial.
    assert TRIALS <= len(trials) <= TRIALS + 1
    assert study.best_value == max(trial.value for trial in trials)
    assert study.best_params["x"] == next(
        t.params["x"] for t in trials if t.value == study.best_value
    )
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    assert {trial.user_attrs["worker"] for trial in trials} == {"0", "1"}


def test_a_plain_postgresql_url_gets_the_installed_driver():
    assert (
        storage_url("postgresql://u:pw@db:5432/optuna")
        == "postgresql+psycopg://u:pw@db:5432/optuna"
    )
    assert storage_url("postgresql+psycopg2://u@db/optuna") == "postgresql+psycopg2://u@db/optuna"
    assert storage_url("sqlite:///study.db") == "sqlite:///study.db"
    with pytest.raises(CxrdetError, match="not a database URL"):
        storage_url("db-host:5432")


def test_an_unreachable_study_database_is_an_error_naming_it_without_its_password():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"postgresql://optuna:secret@127.0.0.1:{probe.getsockname()[1]}/optuna"
    params = StudyParams(storage=url)
    with pytest.raises(
        CxrdetError,
        match=r"study\.storage postgresql\+psycopg://optuna:\*\*\*@127.0.0.1:\d+/optuna: "
        r"cannot open the database: .*refused",
    ) as error:
        open_study("s", params, Path("unused.journal"), make_pruner(PrunerParams(name="none"), 1))
    assert "secret" not in str(error.value)
