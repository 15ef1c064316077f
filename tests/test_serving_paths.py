"""The served model's `path` column: off by default; with a root, only regular files below
it (resolved, symlinks included), and one uniform refusal that reveals nothing about files
outside the root (not even whether they exist)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from cxrdet.errors import CxrdetError
from cxrdet.serving.inputs import ModelInputError, image_files
from cxrdet.serving.path_root import DISABLED, ENV, REFUSED, configured_root


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A root with an image, a folder, a FIFO and two symlinks; a secret file outside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (outside / "secret.dcm").write_bytes(b"secret")
    os.mkfifo(root / "pipe.png")
    (root / "escape.dcm").symlink_to(outside / "secret.dcm")
    (root / "inside.png").symlink_to(root / "sub" / "a.png")
    return {"root": root.resolve(), "outside": outside, "work": tmp_path}


def files(value: str, root: Path | None, work: Path):
    return image_files(pd.DataFrame({"image_id": ["a"], "path": [value]}), work, root)


def refusal(value: str, root: Path | None, work: Path) -> str:
    with pytest.raises(ModelInputError) as raised:
        files(value, root, work)
    return str(raised.value)


def test_paths_are_refused_without_a_root_even_for_existing_files(tree):
    message = refusal(str(tree["root"] / "sub" / "a.png"), None, tree["work"])
    assert message == f"row 0 (image_id 'a'), column path: {DISABLED}"


def test_regular_files_below_the_root_are_read_absolute_relative_or_via_inner_symlinks(tree):
    root = tree["root"]
    for value in (str(root / "sub" / "a.png"), "sub/a.png", "inside.png", "sub/../sub/a.png"):
        assert files(value, root, tree["work"]).paths == [root / "sub" / "a.png"], value


@pytest.mark.parametrize(
    "value",
    [
        "{outside}/secret.dcm",  # exists, outside the root
        "../outside/secret.dcm",  # traversal to an existing file
        "escape.dcm",  # a symlink in the root pointing out of it
        "{outside}/missing.dcm",  # missing, outside
        "missing.dcm",  # missing, inside
        "sub",  # a directory
        "pipe.png",  # a FIFO: refused without opening it (opening would block)
        "/etc/passwd",
        "/proc/self/environ",
        "sub/a.png\0x",
    ],
)
def test_anything_else_gets_one_uniform_refusal(tree, value):
    value = value.format(outside=tree["outside"])
    message = refusal(value, tree["root"], tree["work"])
    assert message == f"row 0 (image_id 'a'), column path ({value}): {REFUSED}"


def test_the_root_comes_from_the_model_config_or_the_environment(tree, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert configured_root(None) is None and configured_root({"device": "cpu"}) is None
    monkeypatch.setenv(ENV, str(tree["root"] / "sub" / ".."))
    assert configured_root({}) == tree["root"]
    assert configured_root({"path_root": str(tree["outside"])}) == tree["outside"].resolve()
    monkeypatch.setenv(ENV, str(tree["root"] / "nope"))
    with pytest.raises(CxrdetError, match=ENV):
        configured_root({})


def test_serve_refuses_a_path_root_that_is_no_folder_with_exit_2(tmp_path, monkeypatch, capsys):
    from cxrdet.cli import main

    monkeypatch.delenv(ENV, raising=False)
    argv = ["serve", "--model", "models:/m@champion", "--path-root", str(tmp_path / "nope")]
    assert main(argv) == 2
    assert f"{ENV} / model config path_root=" in capsys.readouterr().err


def test_readme_serving_section_states_the_pixel_limit():
    from cxrdet.data.dicom import MAX_PIXELS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    serving = readme[readme.index("**Serving.**") : readme.index("## Params and profiles")]
    assert f"{MAX_PIXELS / 1e6:.0f} MP (`cxrdet.data.dicom.MAX_PIXELS`" in serving
    assert "--path-root" in serving and ENV in serving
