"""Faults: a stage killed by SIGTERM closes its MLflow run as KILLED; an output that
cannot be written raises an error naming it and leaves the earlier file intact."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cxrdet.errors import OutputWriteError
from cxrdet.io import write_json, write_parquet
from cxrdet.tracking.runs import stage_run

STAGE = """
import sys, time
from pathlib import Path
from cxrdet.tracking.runs import stage_run
root = Path(sys.argv[1])
with stage_run("sleepy", root=root, experiment="faults"):
    with __import__("mlflow").start_run(run_name="trial-0", nested=True):
        (root / "started").touch()
        time.sleep(60)
"""


def run_statuses(root: Path) -> dict[str, str]:
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        return dict(db.execute("SELECT name, status FROM runs").fetchall())


def start_sleepy_stage(root: Path) -> subprocess.Popen:
    """The STAGE script in its own process, returned once its nested run is open."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    process = subprocess.Popen(
        [sys.executable, "-c", STAGE, str(root)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (root / "started").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the stage never started"
        time.sleep(0.2)
    return process


def test_sigterm_marks_the_stage_run_killed_and_leaves_no_run_running(tmp_path):
    process = start_sleepy_stage(tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    statuses = run_statuses(tmp_path)
    # The nested run's own `with` closes it first (as FAILED); nothing is left RUNNING.
    assert statuses == {"sleepy": "KILLED", "trial-0": "FAILED"}


def test_a_sigkilled_stage_run_is_closed_as_killed_by_the_next_stage_run(tmp_path):
    process = start_sleepy_stage(tmp_path)
    process.kill()  # SIGKILL: the stage cannot close its runs
    process.wait(timeout=60)
    assert run_statuses(tmp_path) == {"sleepy": "RUNNING", "trial-0": "RUNNING"}
    with stage_run("next", root=tmp_path, experiment="faults"):
        assert run_statuses(tmp_path) == {
            "sleepy": "KILLED",
            "trial-0": "KILLED",
            "next": "RUNNING",
        }
    with stage_run("next", root=tmp_path, experiment="faults"):  # a live stage's run is left alone
        pass
    assert set(run_statuses(tmp_path).values()) == {"KILLED", "FINISHED"}


def test_an_unwritable_output_names_the_file_and_keeps_the_earlier_one(tmp_path):
    earlier = tmp_path / "metrics.json"
    write_json({"score": 0.5}, earlier)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputWriteError, match=r"not_a_folder/out\.parquet: cannot write"):
        write_parquet(pd.DataFrame({"a": [1]}), blocker / "out.parquet")

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    original = pd.DataFrame.to_parquet
    pd.DataFrame.to_parquet = disk_full
    try:
        with pytest.raises(
            OutputWriteError, match=r"metrics\.parquet: cannot write: No space left on device"
        ):
            write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "metrics.parquet")
    finally:
        pd.DataFrame.to_parquet = original
    with pytest.raises(
        OutputWriteError, match=r"metrics\.json: cannot write: No space left on device"
    ):
        with_disk_full_json(earlier)
    assert earlier.read_text() == '{\n  "score": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "not_a_folder"]


def with_disk_full_json(path: Path) -> None:
    from cxrdet.io import atomic_path

    with atomic_path(path) as partial:
        partial.write_text('{"score": 0.')  # half written when the disk fills up
        raise OSError(28, "No space left on device")
