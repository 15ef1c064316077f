"""The demo pipeline end to end: `dvc repro` in a temporary clone of the working tree."""

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, env: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, f"{command}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed


@pytest.fixture(scope="module")
def clone(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Tracked and untracked-but-not-ignored files, committed in a fresh repository."""
    target = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=project_root, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = project_root / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q"], target, env)
    run(["git", "add", "-A"], target, env)
    run(["git", "commit", "-qm", "snapshot"], target, env)
    run(["dvc", "repro"], target, env)
    return target, env


def test_repro_writes_every_stage_output(clone):
    root, _ = clone
    for path in ["data/raw/demo/rsna/stage_2_train_labels.csv", "data/raw/demo/samples.png",
                 "data/prepared/detect/images.parquet", "data/prepared/pretrain/targets.parquet",
                 "data/prepared/detect/samples.png", "data/split/folds.parquet",
                 "results/split/split.json", "dvc.lock"]:
        assert (root / path).exists(), path
    folds = pd.read_parquet(root / "data/split/folds.parquet")
    images = pd.read_parquet(root / "data/prepared/detect/images.parquet")
    assert len(folds) == len(images) > 0


def test_every_stage_is_an_mlflow_run_with_identity_tags(clone):
    root, _ = clone
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                            text=True, check=True).stdout.strip()
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        tags = db.execute(
            "SELECT r.name, t.key, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid"
        ).fetchall()
    by_run: dict[str, dict[str, str]] = {}
    for name, key, value in tags:
        by_run.setdefault(name, {})[key] = value
    assert {"synthesize", "prepare@detect", "prepare@pretrain", "split"} <= set(by_run)
    for name in ("prepare@detect", "split"):
        assert by_run[name]["mlflow.source.git.commit"] == commit
        assert len(by_run[name]["cxrdet.data_hash"]) == 16
    artifacts = root / "mlruns" / "artifacts"
    assert list(artifacts.rglob("samples.png")), "sample grids logged as artifacts"


def test_second_repro_is_up_to_date(clone):
    root, env = clone
    status = run(["dvc", "status"], root, env).stdout
    assert "up to date" in status.lower() or status.strip() == "", status
