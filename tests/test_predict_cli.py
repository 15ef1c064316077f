"""`cxrdet predict --on-bad-files`: raise stops at the first unreadable image naming it;
skip predicts the rest, lists the rejected images with reasons next to the submission and
exits 2 only above --max-rejected-fraction (the submission of the rest is written anyway)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cxrdet.cli import main
from test_pyfunc_model import bundle, images  # noqa: F401  (fixtures)


@pytest.fixture
def folder(images, tmp_path):  # noqa: F811
    """The four good images, a file that is no PNG and a blank PNG."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images.values():
        shutil.copy(path, folder / path.name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("L", (64, 64), 0).save(folder / "blank.png")
    return folder


def predict(bundle: Path, folder: Path, out: Path, *extra: str) -> int:  # noqa: F811
    argv = ["predict", "--model", str(bundle), "--input", str(folder), "--out", str(out)]
    return main([*argv, "--device", "cpu", "--no-progress", *extra])


def test_raise_stops_at_the_first_bad_file_naming_it(bundle, folder, tmp_path, capsys):  # noqa: F811
    assert predict(bundle, folder, tmp_path / "sub.csv") == 2
    assert f"{folder / 'blank.png'}: blank image" in capsys.readouterr().err
    assert not (tmp_path / "sub.csv").exists()


def test_skip_predicts_the_rest_and_lists_the_rejected(bundle, folder, images, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "sub.csv"
    assert predict(bundle, folder, out, "--on-bad-files", "skip") == 2  # 2 of 6 > 0.05
    assert "2 of 6 images rejected (> --max-rejected-fraction=0.05)" in capsys.readouterr().err
    written = pd.read_csv(out)
    assert sorted(written["patientId"]) == sorted(images)  # the four readable ones, no others
    rejected = pd.read_csv(tmp_path / "sub.rejected.csv").set_index("image_id")
    assert sorted(rejected.index) == ["blank", "corrupt"]
    assert rejected.loc["blank", "reason"].startswith("blank image")
    assert rejected.loc["corrupt", "file"] == str(folder / "corrupt.png")
    assert (
        predict(bundle, folder, out, "--on-bad-files", "skip", "--max-rejected-fraction", "0.5")
        == 0
    )
    assert pd.read_csv(out).equals(written)
