"""A local scoring server for a model: `mlflow models serve --env-manager local` (what
`cxrdet serve` runs), on 127.0.0.1 and a free port for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from cxrdet.errors import CxrdetError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_command(model_uri: str, host: str, port: int, workers: int) -> list[str]:
    """`mlflow models serve` of this interpreter, offline (--env-manager local)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
        "-w",
        str(workers),
    ]


def serve_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: MLflow starts `uvicorn` by name, so this interpreter's
    scripts folder (the venv's bin) goes first on PATH; the venv need not be activated."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, **(extra or {})}


@contextmanager
def model_server(
    model_uri: str, env: Mapping[str, str] | None = None, start_timeout: float = 300.0
) -> Iterator[str]:
    """Serve `model_uri` (one worker, offline env manager) until the block ends; yields the
    base URL once /ping answers. CxrdetError with the server's log if it does not start."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        # its own session: the server and any worker it forks stop together
        process = subprocess.Popen(
            serve_command(model_uri, "127.0.0.1", port, 1),
            env=serve_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, log, start_timeout)
            yield url
        finally:
            stop(process)


def invoke(url: str, frame: pd.DataFrame, timeout: float = 300.0) -> tuple[int, Any]:
    """POST `frame` as dataframe_records to /invocations: (HTTP status, decoded JSON body)."""
    return post(url, {"dataframe_records": frame.to_dict(orient="records")}, timeout)


def post(url: str, body: Any, timeout: float = 300.0) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text


def wait_ready(url: str, process: subprocess.Popen, log: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    log.seek(0)
    state = (
        f"exited with {process.returncode}"
        if process.poll() is not None
        else f"not ready after {timeout:.0f} s"
    )
    raise CxrdetError(f"model server {state}:\n{log.read()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
