"""Copy the working tree (tracked and untracked-but-not-ignored files) into a folder: what the
end-to-end tests turn into a fresh project, so they test the code as it is, committed or not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def copy_worktree(source: Path, target: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    return target


def run(
    command: list[str], cwd: Path, env: dict, timeout: int = 1800
) -> subprocess.CompletedProcess:
    """`command` in `cwd`; a failure shows the end of its output."""
    completed = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, (
        f"{command}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    )
    return completed


def fresh_project(source: Path, target: Path) -> tuple[Path, dict]:
    """The working tree as one commit of a new git repository at `target` (what a clone of
    it holds); (its root, the environment its commands run in)."""
    copy_worktree(source, target)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    run(["git", "init", "-q"], target, env)
    run(["git", "add", "-A"], target, env)
    run(["git", "commit", "-qm", "snapshot"], target, env)
    return target, env


def demo_clone(source: Path, target: Path) -> tuple[Path, dict]:
    """`fresh_project` after `dvc repro` (the demo pipeline, ~10 min on 2 idle cores)."""
    root, env = fresh_project(source, target)
    run(["dvc", "repro"], root, env, timeout=3000)
    return root, env
