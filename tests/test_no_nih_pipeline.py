"""Own data without NIH ChestX-ray14: a folder-format detect dataset, no `data.pretrain`,
pretrain.source none. In a temporary clone, `dvc repro` prepares, splits and pretrains with
no NIH data anywhere (no prepare@pretrain stage, no synthetic demo data)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cxrdet.data.sources.synthetic import DemoSpec, synthesize

from worktree import copy_worktree

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def own_project(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The working tree's tracked and untracked-but-not-ignored files, your own folder data
    `dvc add`ed as data/raw/own, params without data.pretrain, committed in a fresh repository."""
    target = tmp_path_factory.mktemp("own")
    copy_worktree(project_root, target)
    raw = tmp_path_factory.mktemp("raw")
    spec = DemoSpec(
        seed=11, image_size=128, rsna_images=8, vinbigdata_images=8, nih_images=8, folder_images=30
    )
    synthesize(raw, spec, progress=False)
    shutil.copytree(raw / "folder", target / "data/raw/own")  # only the folder format: no NIH files

    params = yaml.safe_load((target / "params.yaml").read_text())
    params["data"] = {"detect": {"format": "folder", "raw_dir": "data/raw/own"}}
    params["pretrain"]["source"] = "none"
    params["prepare"] |= {"image_size": 64, "workers": 1}
    params["train"] |= {"progress": False, "threads": 1}
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {
        "OMP_NUM_THREADS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    run(["git", "init", "-q"], target, env)
    run(["dvc", "add", "-q", "data/raw/own"], target, env)
    run(["git", "add", "-A"], target, env)
    run(["git", "commit", "-qm", "own data, no NIH"], target, env)
    return target, env


def test_no_prepare_stage_for_nih_exists(own_project):
    root, env = own_project
    listed = run(["dvc", "stage", "list"], root, env).stdout
    stages = [line.split()[0] for line in listed.splitlines()]
    assert "prepare@detect" in stages and "pretrain" in stages
    assert [stage for stage in stages if stage.startswith("prepare@")] == ["prepare@detect"]
    # The whole pipeline's graph resolves without NIH data: pretrain feeds the fold stages.
    dag = run(["dvc", "dag", "--dot"], root, env).stdout
    assert "prepare@pretrain" not in dag and '"pretrain" -> "train_classifier@0"' in dag, dag


def test_repro_up_to_pretrain_runs_without_nih_data(own_project):
    root, env = own_project
    run(["dvc", "repro", "split", "pretrain"], root, env)
    assert (root / "data/split/folds.parquet").is_file()
    content = torch.load(root / "models/pretrained/test_resnet.pt", weights_only=True)
    assert content["kind"] == "backbone" and content["config"]["source"] == "none"
    assert json.loads((root / "results/pretrain/metrics.json").read_text()) == {"source": "none"}
    # Nothing NIH was read or written: the prepared folder holds only what git keeps there (its
    # .gitignore, the demo's committed stats.json), unchanged, and no demo data was made.
    folder = "data/prepared/pretrain"
    kept = sorted(path.name for path in (root / folder).iterdir())
    tracked = run(["git", "ls-files", folder], root, env).stdout.split()
    assert kept == sorted(Path(name).name for name in tracked)
    assert run(["git", "status", "--porcelain", folder], root, env).stdout == ""
    assert not (root / "data/raw/demo").exists()
    status = run(["dvc", "status", "split", "pretrain"], root, env).stdout
    assert "up to date" in status, status
