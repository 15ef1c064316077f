"""What the README says about a failed stage under `dvc repro`, on a two-file stage in a
temporary DVC project (like `split`: a cached output and a `cache: false` metrics file):
DVC removes a stage's outputs before it runs the command, so a failed run leaves neither;
`dvc checkout` brings back the cached output only; once the inputs are as before,
`dvc repro` restores both from DVC's run cache without running the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

STAGE_CODE = """
import json, sys, yaml
value = yaml.safe_load(open("params.yaml"))["value"]
with open("runs.log", "a") as log:  # not an output: counts the command's runs
    log.write(f"{value}\\n")
if value == "bad":
    sys.exit("bad value")
open("out.txt", "w").write(str(value))
json.dump({"value": value}, open("metric.json", "w"))
"""
PIPELINE = {
    "stages": {
        "make": {
            "cmd": f"{sys.executable} make.py",
            "deps": ["make.py"],
            "params": ["value"],
            "outs": ["out.txt"],
            "metrics": [{"metric.json": {"cache": False}}],
        }
    }
}


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_failed_stage_loses_its_outputs_and_the_run_cache_brings_them_back(tmp_path):
    root = tmp_path
    (root / "make.py").write_text(STAGE_CODE)
    (root / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    (root / "params.yaml").write_text("value: 1\n")
    dvc(root, "init", "--no-scm")
    dvc(root, "repro")
    assert (root / "out.txt").read_text() == "1"

    (root / "params.yaml").write_text("value: bad\n")
    assert dvc(root, "repro", check=False).returncode != 0
    assert not (root / "out.txt").exists() and not (root / "metric.json").exists()

    dvc(root, "checkout")  # dvc.lock still names the last good outputs
    assert (root / "out.txt").read_text() == "1" and not (root / "metric.json").exists()

    (root / "params.yaml").write_text("value: 1\n")
    assert "is cached - skipping run" in dvc(root, "repro").stdout
    assert json.loads((root / "metric.json").read_text()) == {"value": 1}
    assert (root / "runs.log").read_text().split() == ["1", "bad"]  # not run again
