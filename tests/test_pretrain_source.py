"""Pretraining without NIH data: `data.pretrain` is needed only by pretrain.source nih."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cxrdet.cli import main
from cxrdet.config import load_params, validate_params
from cxrdet.errors import ConfigError


def demo_params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def test_nih_source_needs_data_pretrain_and_the_error_names_it(project_root):
    raw = demo_params(project_root)
    del raw["data"]["pretrain"]
    missing = r"pretrain: .*source 'nih' trains on data\.pretrain, which is missing"
    with pytest.raises(ConfigError, match=missing):
        validate_params(raw)
    raw["data"]["pretrain"] = None  # null is the same as absent
    with pytest.raises(ConfigError, match=r"data\.pretrain, which is missing"):
        validate_params(raw)


@pytest.mark.parametrize(
    "source",
    [
        {"source": "none"},
        {"source": "imagenet", "allow_download": True},
        {"source": "file", "weights": {"test_resnet": "models/imported/x.pt"}},
    ],
)
@pytest.mark.parametrize("absent", ["removed", "null"])
def test_other_sources_need_no_nih_data(project_root, source, absent):
    raw = demo_params(project_root)
    raw["data"]["pretrain"] = None
    if absent == "removed":
        del raw["data"]["pretrain"]
    raw["pretrain"] |= source
    params = validate_params(raw)
    assert params.data.pretrain is None and params.pretrain.source == source["source"]


def test_a_non_nih_source_may_keep_data_pretrain(project_root):
    raw = demo_params(project_root)
    raw["pretrain"]["source"] = "none"
    assert validate_params(raw).data.pretrain.format == "nih"


def test_the_folder_profile_needs_no_nih_data(project_root):
    params = load_params(project_root / "params.yaml", project_root / "profiles/folder-gpu.yaml")
    assert params.data.detect.format == "folder"
    assert params.data.pretrain is None and params.pretrain.source != "nih"


def test_profile_apply_removes_a_dataset_set_to_null(project_root, tmp_path):
    """dvc.yaml's prepare foreach over `data` cannot skip a null entry: apply deletes it."""
    params = tmp_path / "params.yaml"
    shutil.copy(project_root / "params.yaml", params)
    profile = str(project_root / "profiles/folder-gpu.yaml")
    assert main(["profile", "apply", profile, "--params", str(params)]) == 0
    merged = yaml.safe_load(params.read_text())
    assert list(merged["data"]) == ["detect"]
    assert merged["pretrain"]["source"] == "imagenet"


def test_pretrain_stage_depends_on_a_folder_that_exists_without_nih_data(project_root):
    stage = yaml.safe_load((project_root / "dvc.yaml").read_text())["stages"]["pretrain"]
    nih = [dep for dep in stage["deps"] if dep.startswith("data/prepared/pretrain")]
    assert nih == ["data/prepared/pretrain"]
    # git keeps the folder in every clone: its .gitignore is tracked, not ignored.
    kept = project_root / "data/prepared/pretrain/.gitignore"
    assert kept.is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(kept)], cwd=project_root)
    assert ignored.returncode == 1
