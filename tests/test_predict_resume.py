"""`cxrdet predict` keeps finished chunks: a run killed after its first chunk resumes there
(the chunk is not predicted again) and writes what an uninterrupted run writes; chunks of
other options or other inputs are refused, not mixed in; a run stopped by a bad file under
--on-bad-files raise resumes under skip, and a rejected image stored under skip stops a
run resumed under raise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cxrdet.infer.predictor import EnsemblePredictor, find_images
from test_predict_cli import predict
from test_pyfunc_model import bundle, images  # noqa: F401  (fixtures)


@pytest.fixture
def folder(images, tmp_path):  # noqa: F811
    """The four good images: two chunks of two."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images.values():
        shutil.copy(path, folder / path.name)
    return folder


def watch_loads(monkeypatch, die_at: int | None = None) -> list[list[str]]:
    """The image ids of every load_images call (one per chunk of two); the call numbered
    `die_at` (from 1) raises KeyboardInterrupt instead, as a run killed there stops."""
    calls: list[list[str]] = []
    original = EnsemblePredictor.load_images

    def watched(self, paths, image_ids, rejected=None):
        calls.append(list(image_ids))
        if len(calls) == die_at:
            raise KeyboardInterrupt
        return original(self, paths, image_ids, rejected)

    monkeypatch.setattr(EnsemblePredictor, "load_images", watched)
    return calls


def killed_in_second_chunk(bundle: Path, folder: Path, out: Path, monkeypatch) -> None:  # noqa: F811
    with monkeypatch.context() as patch:
        watch_loads(patch, die_at=2)
        with pytest.raises(KeyboardInterrupt):
            predict(bundle, folder, out, "--checkpoint-every", "2")
    assert not out.exists()


def test_a_killed_run_resumes_without_predicting_its_stored_chunks_again(
    bundle, folder, tmp_path, monkeypatch, capsys
):  # noqa: F811
    whole = tmp_path / "whole.csv"
    assert predict(bundle, folder, whole, "--checkpoint-every", "2") == 0
    assert not (tmp_path / "whole.chunks").exists()  # removed once the submission is written
    out = tmp_path / "sub.csv"
    killed_in_second_chunk(bundle, folder, out, monkeypatch)
    assert sorted(p.name for p in (tmp_path / "sub.chunks").iterdir()) == [
        "00000.json",
        "00000.parquet",
        "manifest.json",
    ]
    calls = watch_loads(monkeypatch)
    capsys.readouterr()
    assert predict(bundle, folder, out, "--checkpoint-every", "2") == 0
    ids = [image_id for image_id, _ in find_images(folder)]
    assert calls == [ids[2:]]  # the first chunk came from disk
    assert "resuming: 1 of 2 chunks done" in capsys.readouterr().err
    assert out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "sub.chunks").exists()


def test_chunks_of_other_options_or_inputs_are_refused_not_mixed(
    bundle, folder, tmp_path, monkeypatch, capsys
):  # noqa: F811
    out, chunks = tmp_path / "sub.csv", tmp_path / "sub.chunks"
    killed_in_second_chunk(bundle, folder, out, monkeypatch)
    stored = {p.name: p.read_bytes() for p in chunks.iterdir()}
    capsys.readouterr()
    assert predict(bundle, folder, out, "--checkpoint-every", "3") == 2
    error = capsys.readouterr().err
    assert f"{chunks}: chunks of another prediction (differing: checkpoint_every)" in error
    assert "remove the folder to start over" in error
    Image.new("L", (64, 64), 128).save(folder / "added.png")  # another input list
    assert predict(bundle, folder, out, "--checkpoint-every", "2") == 2
    assert "(differing: input)" in capsys.readouterr().err
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in chunks.iterdir()} == stored  # left as it was


def test_a_run_stopped_by_a_bad_file_resumes_under_skip(bundle, folder, images, tmp_path, capsys):  # noqa: F811
    (folder / "zz_blank.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # last: third chunk
    out = tmp_path / "sub.csv"
    assert predict(bundle, folder, out, "--checkpoint-every", "2") == 2
    assert f"{folder / 'zz_blank.png'}" in capsys.readouterr().err
    assert (
        predict(
            bundle,
            folder,
            out,
            "--checkpoint-every",
            "2",
            "--on-bad-files",
            "skip",
            "--max-rejected-fraction",
            "0.5",
        )
        == 0
    )
    assert "resuming: 2 of 3 chunks done" in capsys.readouterr().err
    assert sorted(pd.read_csv(out)["patientId"]) == sorted(images)
    assert list(pd.read_csv(tmp_path / "sub.rejected.csv")["image_id"]) == ["zz_blank"]


def test_a_stored_rejected_image_stops_a_run_resumed_under_raise(
    bundle, folder, tmp_path, monkeypatch, capsys
):  # noqa: F811
    bad = folder / "!bad.png"  # sorts first: in the stored chunk
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "sub.csv"
    with monkeypatch.context() as patch:
        watch_loads(patch, die_at=2)
        with pytest.raises(KeyboardInterrupt):
            predict(bundle, folder, out, "--checkpoint-every", "2", "--on-bad-files", "skip")
    capsys.readouterr()
    calls = watch_loads(monkeypatch)
    assert predict(bundle, folder, out, "--checkpoint-every", "2") == 2
    assert f"{bad}: " in capsys.readouterr().err
    assert calls == []  # refused from the stored chunk, before predicting anything
    assert not out.exists()
