"""A shared MLflow tracking server backed by PostgreSQL (`mlflow server --backend-store-uri
postgresql://...`): stages started at once on several machines (here: separate project
roots, so no shared lock file) agree on one experiment; the registry's versions, aliases,
promotion gate and rollback work against it and `models:/<name>@champion` loads from it.
A real stage logging through it: test_postgres_tuning.py; the ensemble registered there and
scored by Spark: test_spark_predict.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from cxrdet.tracking import registry
from cxrdet.tracking.store import configure, ensure_experiment
from test_registry import CONSTANT_MODEL, aliases, register
from test_tracking_store import PARALLEL_STAGE

pytest_plugins = ["postgres"]
pytestmark = pytest.mark.slow


def test_stages_started_at_once_on_several_machines_share_one_experiment(tracking_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "MLFLOW_TRACKING_URI": tracking_server
    }
    roots = [tmp_path / f"machine{k}" for k in range(4)]
    workers = []
    for k, root in enumerate(roots):
        root.mkdir()
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", PARALLEL_STAGE, str(root), str(k)],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    time.sleep(3)  # let them import mlflow
    for root in roots:
        (root / "go").touch()
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()[-3000:]
    client = MlflowClient(tracking_uri=tracking_server)
    experiments = [e for e in client.search_experiments() if e.name == "parallel"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        (f"worker-{k}", "FINISHED") for k in range(4)
    ]


def test_registry_gate_aliases_and_champion_loading_on_a_postgresql_server(
    tracking_server, tmp_path, monkeypatch
):
    monkeypatch.setattr("cxrdet.tracking.store.USER_TRACKING_URI", None)
    assert configure(tmp_path, tracking_server) == tracking_server
    try:
        code = tmp_path / "constant_model.py"
        code.write_text(CONSTANT_MODEL)
        with mlflow.start_run(experiment_id=ensure_experiment("registry-pg", tmp_path)):
            model_uri = mlflow.pyfunc.log_model(
                name="model", python_model=str(code), pip_requirements=["mlflow"]
            ).model_uri
        store, name = (tmp_path, model_uri), "cxrdet-pg"
        first, decision = register(store, name, 0.30)
        assert decision.promote and aliases(name) == {"champion": first, "challenger": first}
        second, decision = register(store, name, 0.305)  # gains 0.005 < min_delta 0.01
        assert not decision.promote and aliases(name) == {"champion": first, "challenger": second}
        third, decision = register(store, name, 0.35)
        assert decision.promote and aliases(name)["champion"] == third
        assert registry.champion_history(name) == [first, third]
        assert registry.rollback(name) == (third, first)
        assert registry.resolve(f"models:/{name}@champion")[0] == f"models:/{name}/{first}"
        frame = pd.DataFrame({"image_id": ["a"], "path": ["a.png"]})
        assert mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(frame).equals(frame)
    finally:
        mlflow.set_tracking_uri(None)
