"""MLflow tracking-server mode: a stage logs to `mlflow server` through MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from prepared_demo import prepare_project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def test_a_stage_logs_to_a_tracking_server(demo_raw, tmp_path):
    project = prepare_project(demo_raw, tmp_path / "project", folds=2)
    shutil.copy2(ROOT / "params.yaml", project / "params.yaml")
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            url.rsplit(":", 1)[1],
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_healthy(url, server)
        stage = subprocess.run(
            [sys.executable, str(ROOT / "pipelines" / "split.py")],
            cwd=project,
            env=env | {"CXRDET_ROOT": str(project), "MLFLOW_TRACKING_URI": url},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert stage.returncode == 0, stage.stderr[-3000:]
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("cxrdet")
        (run,) = client.search_runs(
            [experiment.experiment_id], filter_string="attributes.run_name = 'split'"
        )
        assert run.info.status == "FINISHED" and run.data.tags["cxrdet.stage"] == "split"
        assert run.data.metrics, "the split's statistics are logged"
        assert [item.path for item in client.list_artifacts(run.info.run_id)] == ["split.json"]
        assert list((tmp_path / "artifacts").rglob("split.json")), (
            "artifacts went through the server"
        )
        assert not (project / "mlruns" / "mlflow.db").exists()  # nothing went to the local store
    finally:
        server.terminate()
        server.wait(timeout=30)
