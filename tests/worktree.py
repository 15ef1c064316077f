"""Copy the working tree (tracked and untracked-but-not-ignored files) into a folder: what the
end-to-end tests turn into a fresh project, so they test the code as it is, committed or not."""

from __future__ import annotations

import shutil
import subprocess
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
