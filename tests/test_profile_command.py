import shutil

import pytest
import yaml

from cxrdet.cli import main


def test_profile_apply_merges_keeps_comments_and_validates(project_root, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(project_root / "params.yaml", params)
    assert (
        main(
            [
                "profile",
                "apply",
                str(project_root / "profiles/vinbigdata-gpu.yaml"),
                "--params",
                str(params),
            ]
        )
        == 0
    )
    text = params.read_text()
    merged = yaml.safe_load(text)
    assert merged["data"]["detect"] == {
        "format": "vinbigdata",
        "raw_dir": "data/raw/vinbigdata",
        "on_bad_rows": "raise",
        "fuse_readers": True,
        "fuse_iou": 0.4,
    }
    assert merged["prepare"]["workers"] == 0  # untouched sibling kept
    assert "# cxrdet params: every knob" in text  # comments survive the round trip


def test_profile_apply_refuses_an_invalid_result(project_root, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    shutil.copy(project_root / "params.yaml", params)
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("split:\n  folds: 1\n")
    assert main(["profile", "apply", str(bad), "--params", str(params)]) == 2
    assert "split.folds" in capsys.readouterr().err
    assert params.read_text() == before  # nothing written


@pytest.mark.parametrize(
    "command", [["--help"], ["prepare", "--help"], ["profile", "apply", "--help"]]
)
def test_cli_help_smoke(command):
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 0
