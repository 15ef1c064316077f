"""A throw-away PostgreSQL cluster for the tests (`postgres_server`): `initdb` in a temporary
folder, `pg_ctl start` on a free loopback port, stopped and removed after the session.

PostgreSQL refuses to run as root: under root the cluster belongs to the unprivileged user
`nobody`. Without the binaries (Debian's `postgresql` package: on PATH or under
/usr/lib/postgresql/<version>/bin) the tests using it are skipped with the reason."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

UNPRIVILEGED = "nobody"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(installed[-1]).parent if installed else None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver), as Optuna and MLflow take it."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _run_as(owner: str | None, *command: str | Path, check: bool = True) -> None:
    """Run a PostgreSQL program as `owner` (None: this user)."""
    user = {"user": owner, "group": pwd.getpwnam(owner).pw_gid} if owner else {}
    subprocess.run(
        list(map(str, command)), check=check, capture_output=True, text=True, timeout=120, **user
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql")
    pytest.importorskip("psycopg", reason="psycopg not installed: pip install -e '.[postgres]'")
    owner = UNPRIVILEGED if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="cxrdet-pg-"))
    if owner:
        shutil.chown(folder, owner, pwd.getpwnam(owner).pw_gid)
    data, port = folder / "data", free_port()
    _run_as(
        owner,
        binaries / "initdb",
        "-D",
        data,
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-sync",
    )
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=200"
    _run_as(
        owner, binaries / "pg_ctl", "-D", data, "-l", folder / "log", "-o", options, "-w", "start"
    )
    try:
        yield PostgresServer("127.0.0.1", port, "postgres")
    finally:
        _run_as(
            owner, binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tracking_server(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`mlflow server` on a free loopback port, its runs and registry in PostgreSQL, its
    artifacts in a temporary folder; yields its URL."""
    store = postgres_server.create_database("mlflow")
    folder = tmp_path_factory.mktemp("mlflow-server")
    log = folder / "server.log"
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
            store,
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        deadline = time.monotonic() + 600
        while not _healthy(url):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False
