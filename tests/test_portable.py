"""The DVC promise across machines and folders (issue 16): a fresh copy of the project in
any folder reproduces the committed dvc.lock byte for byte and leaves git clean, and a
push / pull round trip leaves nothing to reproduce. Up to `split`: the data stages, the
ones every other stage stands on (the whole pipeline runs in tests/test_pipeline_e2e.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worktree import copy_worktree

pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }


def run(command: list[str], cwd: Path) -> str:
    completed = subprocess.run(
        command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=1200
    )
    assert completed.returncode == 0, (
        f"{command}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    )
    return completed.stdout


def fresh_project(source: Path, target: Path) -> Path:
    """The working tree as one commit in a new repository (what a clone of it holds)."""
    copy_worktree(source, target)
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "snapshot"], target)
    return target


def test_two_folders_reproduce_the_committed_lock_and_leave_git_clean(project_root, tmp_path):
    locks = []
    for folder in (tmp_path / "first", tmp_path / "some" / "other" / "second"):
        root = fresh_project(project_root, folder)
        run(["dvc", "repro", "split"], root)
        assert run(["git", "status", "--porcelain"], root) == "", (
            "dvc repro changed tracked files: the committed dvc.lock (or a .gitignore) is not "
            "what this code writes; run `make demo` and commit dvc.lock"
        )
        locks.append((root / "dvc.lock").read_text())
    assert locks[0] == locks[1]


def test_a_pushed_and_pulled_project_has_nothing_to_reproduce(project_root, tmp_path):
    first = fresh_project(project_root, tmp_path / "first")
    run(["dvc", "repro", "split"], first)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], first)
    run(["git", "commit", "-qam", "remote"], first)
    run(["dvc", "push", "--with-deps", "split"], first)
    second = tmp_path / "elsewhere" / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    run(["dvc", "pull", "--with-deps", "split"], second)
    status = run(["dvc", "status", "--with-deps", "split"], second)
    assert "changed" not in status and "deleted" not in status, status
    reproduced = run(["dvc", "repro", "split"], second)
    assert "Running stage" not in reproduced, reproduced
