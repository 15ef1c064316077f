"""The MLflow store location: absolute, and shared with DVC's experiment copies."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrdet.tracking.store import artifact_root, default_tracking_uri, store_root


def test_the_store_is_the_projects_even_from_a_queued_experiment_copy(tmp_path):
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    assert store_root(project) == project.resolve()
    assert store_root(copy) == project.resolve()
    assert default_tracking_uri(copy) == f"sqlite:///{project.resolve()}/mlruns/mlflow.db"
    assert artifact_root(copy) == project.resolve() / "mlruns" / "artifacts"


def test_a_folder_merely_named_like_dvc_parts_is_its_own_store(tmp_path):
    project = tmp_path / "exps" / "tmp" / "project"
    assert store_root(project) == project.resolve()
    assert default_tracking_uri(Path(project)).endswith("/exps/tmp/project/mlruns/mlflow.db")


PARALLEL_STAGE = """
import sys, time
from pathlib import Path
from cxrdet.tracking.runs import stage_run
root = Path(sys.argv[1])
while not (root / "go").exists():  # start together: the race is on the first touch of the store
    time.sleep(0.01)
with stage_run("split", root=root, experiment="parallel", run_name=f"worker-{sys.argv[2]}"):
    pass
"""


@pytest.mark.slow  # four processes importing MLflow at once
def test_parallel_first_stages_share_one_fresh_store(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", PARALLEL_STAGE, str(tmp_path), str(k)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    time.sleep(3)  # let them import mlflow
    (tmp_path / "go").touch()
    for worker in workers:
        assert worker.wait(timeout=180) == 0, worker.stderr.read()[-2000:]
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as db:
        experiments = db.execute("SELECT name FROM experiments WHERE name = 'parallel'").fetchall()
        runs = db.execute("SELECT name, status FROM runs").fetchall()
    assert len(experiments) == 1
    assert sorted(runs) == [(f"worker-{k}", "FINISHED") for k in range(4)]


def test_an_unreachable_tracking_server_is_an_error_naming_it(tmp_path, monkeypatch):
    import socket

    from cxrdet.errors import CxrdetError
    from cxrdet.tracking.store import configure, ensure_experiment

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr("cxrdet.tracking.store.USER_TRACKING_URI", None)
    configure(tmp_path, url)
    try:
        with pytest.raises(CxrdetError, match=f"MLflow tracking store {url}: .*"):
            ensure_experiment("cxrdet", tmp_path)
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
