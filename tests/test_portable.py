"""The DVC promise across machines and folders (issue 16): a fresh copy of the project in
any folder reproduces the committed dvc.lock byte for byte and leaves git clean, and a
push / pull round trip leaves nothing to reproduce. Up to `split`: the data stages, the
ones every other stage stands on (the whole pipeline runs in tests/test_pipeline_e2e.py)."""

from __future__ import annotations

import pytest

from worktree import fresh_project, run

pytestmark = pytest.mark.slow


def test_two_folders_reproduce_the_committed_lock_and_leave_git_clean(project_root, tmp_path):
    locks = []
    for folder in (tmp_path / "first", tmp_path / "some" / "other" / "second"):
        root, env = fresh_project(project_root, folder)
        run(["dvc", "repro", "split"], root, env)
        assert run(["git", "status", "--porcelain"], root, env).stdout == "", (
            "dvc repro changed tracked files: the committed dvc.lock (or a .gitignore) is not "
            "what this code writes; run `make demo` and commit dvc.lock"
        )
        locks.append((root / "dvc.lock").read_text())
    assert locks[0] == locks[1]


def test_a_pushed_and_pulled_project_has_nothing_to_reproduce(project_root, tmp_path):
    first, env = fresh_project(project_root, tmp_path / "first")
    run(["dvc", "repro", "split"], first, env)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], first, env)
    run(["git", "commit", "-qam", "remote"], first, env)
    run(["dvc", "push", "--with-deps", "split"], first, env)
    second = tmp_path / "elsewhere" / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path, env)
    run(["dvc", "pull", "--with-deps", "split"], second, env)
    status = run(["dvc", "status", "--with-deps", "split"], second, env).stdout
    assert "changed" not in status and "deleted" not in status, status
    reproduced = run(["dvc", "repro", "split"], second, env).stdout
    assert "Running stage" not in reproduced, reproduced
