"""The metrics files committed to git are the ones the committed dvc.lock records: the
README's demo numbers (rendered from them) are what `dvc repro` of this tree wrote."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml


def lock_outputs(root: Path) -> dict[str, str]:
    """path -> md5 of every file output dvc.lock records."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if "md5" in out and not out["md5"].endswith(".dir")
    }


def test_every_committed_result_file_is_what_dvc_lock_records(project_root):
    committed = subprocess.run(
        ["git", "ls-files", "results", "data"],
        cwd=project_root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    files = [name for name in committed if not name.endswith((".gitignore", ".dvc"))]
    assert "results/detector/metrics.json" in files, "the demo's metrics are committed"
    recorded = lock_outputs(project_root)
    for name in files:
        assert name in recorded, f"{name} is committed but no stage of dvc.lock writes it"
        digest = hashlib.md5((project_root / name).read_bytes()).hexdigest()
        assert digest == recorded[name], f"{name} differs from dvc.lock: rerun `make demo`"
