import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdet.data.cache import read_cached
from cxrdet.data.prepare import PrepareOptions, prepare_dataset
from cxrdet.errors import CxrdetError


def options(**overrides) -> PrepareOptions:
    return PrepareOptions(
        **({"image_size": 64, "workers": 1, "sample_grid": 4, "progress": False} | overrides)
    )


def corrupted_rsna(demo_raw: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the synthetic RSNA data with one truncated and one non-DICOM image."""
    raw = tmp_path / "rsna"
    shutil.copytree(demo_raw / "rsna", raw)
    files = sorted((raw / "stage_2_train_images").glob("*.dcm"))
    truncated, not_dicom = files[0], files[1]
    truncated.write_bytes(truncated.read_bytes()[:400])
    not_dicom.write_text("this is not a DICOM file")
    return raw, [truncated.stem, not_dicom.stem]


def test_prepare_writes_tables_cache_and_scales(demo_raw, tmp_path):
    out = tmp_path / "prepared"
    result = prepare_dataset("rsna", demo_raw / "rsna", out, options())
    images = pd.read_parquet(out / "images.parquet")
    boxes = pd.read_parquet(out / "boxes.parquet")
    assert len(images) == 40 and result.stats["n_rejected"] == 0
    assert set(boxes["image_id"]) <= set(images["image_id"])
    for row in images.itertuples():
        cached = read_cached(out / row.cache_path)
        assert cached.shape == (64, 64) and cached.dtype == np.uint8
        assert row.scale_x == pytest.approx(64 / row.width)
    info = json.loads((out / "dataset.json").read_text())
    assert info["class_names"] == ["Lung Opacity"] and len(info["data_hash"]) == 16
    assert (out / "samples.png").stat().st_size > 0
    assert result.stats["n_boxes"] == len(boxes) > 0


def test_prepare_same_input_same_data_hash(demo_raw, tmp_path):
    first = prepare_dataset("rsna", demo_raw / "rsna", tmp_path / "a", options())
    second = prepare_dataset("rsna", demo_raw / "rsna", tmp_path / "b", options(workers=2))
    assert first.info["data_hash"] == second.info["data_hash"]


def test_unreadable_images_are_listed_and_skipped(demo_raw, tmp_path):
    raw, bad_ids = corrupted_rsna(demo_raw, tmp_path)
    out = tmp_path / "prepared"
    result = prepare_dataset("rsna", raw, out, options(max_rejected_fraction=0.1))
    rejected = pd.read_csv(out / "rejected.csv")
    assert sorted(rejected["image_id"]) == sorted(bad_ids)
    assert rejected["reason"].str.len().min() > 5
    assert result.stats["n_images"] == 38
    assert not set(bad_ids) & set(pd.read_parquet(out / "images.parquet")["image_id"])
    assert not set(bad_ids) & set(pd.read_parquet(out / "boxes.parquet")["image_id"])


def test_too_many_rejections_fail_but_keep_what_was_written(demo_raw, tmp_path):
    raw, bad_ids = corrupted_rsna(demo_raw, tmp_path)
    out = tmp_path / "prepared"
    with pytest.raises(CxrdetError, match=r"2 of 40 images rejected .*max_rejected_fraction=0.01"):
        prepare_dataset("rsna", raw, out, options(max_rejected_fraction=0.01))
    assert set(pd.read_csv(out / "rejected.csv")["image_id"]) == set(bad_ids)
    assert len(list((out / "cache").glob("*.png"))) == 38


def test_rerun_resumes_from_the_cache_and_rebuilds_on_new_settings(demo_raw, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset("rsna", demo_raw / "rsna", out, options())
    cached = sorted((out / "cache").glob("*.png"))
    cached[0].unlink()  # as if killed before writing this one
    stamps = {p.name: p.stat().st_mtime_ns for p in cached[1:]}
    prepare_dataset("rsna", demo_raw / "rsna", out, options())
    assert cached[0].exists()
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in cached[1:])
    prepare_dataset("rsna", demo_raw / "rsna", out, options(image_size=32))
    assert read_cached(cached[1]).shape == (32, 32)


@pytest.mark.parametrize("fmt", ["vinbigdata", "nih", "folder"])
def test_every_format_prepares(demo_raw, tmp_path, fmt):
    result = prepare_dataset(fmt, demo_raw / fmt, tmp_path / fmt, options())
    assert result.stats["n_images"] > 0 and result.stats["n_rejected"] == 0
    targets = pd.read_parquet(tmp_path / fmt / "targets.parquet")
    assert list(targets["image_id"]) == list(result.images["image_id"])
    if fmt == "nih":
        assert targets.shape[1] == 16  # image_id + 14 findings + abnormal


def test_missing_raw_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CxrdetError, match="raw data folder not found"):
        prepare_dataset("rsna", tmp_path / "absent", tmp_path / "out", options())


def test_cli_prepare_runs_and_reports(demo_raw, tmp_path):
    command = [
        sys.executable,
        "-m",
        "cxrdet.cli",
        "prepare",
        "--source",
        "folder",
        "--raw-dir",
        str(demo_raw / "folder"),
        "--out-dir",
        str(tmp_path / "out"),
        "--image-size",
        "48",
        "--workers",
        "1",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "images" in completed.stdout and (tmp_path / "out" / "images.parquet").exists()
    missing = subprocess.run(
        command[:7] + [str(tmp_path / "nope")] + command[8:],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "raw data folder not found" in missing.stderr


def test_the_prepare_stage_writes_the_same_bytes_in_any_project_folder(
    demo_raw, tmp_path, project_root
):
    """No machine path in the stage's outputs: two project folders, identical files."""
    import yaml

    from cxrdet.stages import prepare as stage

    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["data"] = {"detect": {"format": "rsna", "raw_dir": "raw/rsna"}}
    params["prepare"] |= {"image_size": 64, "workers": 1, "sample_grid": 2}
    params["train"]["progress"] = False
    params["pretrain"]["source"] = "none"
    roots = [tmp_path / "first", tmp_path / "elsewhere" / "second"]
    for root in roots:
        (root / "raw").mkdir(parents=True)
        (root / "raw" / "rsna").symlink_to(demo_raw / "rsna")
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        stage.run(root, "detect")
    outputs = [root / "data/prepared/detect" for root in roots]
    names = sorted(p.relative_to(outputs[0]) for p in outputs[0].rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(outputs[1]) for p in outputs[1].rglob("*") if p.is_file())
    for name in names:
        first, second = ((out / name).read_bytes() for out in outputs)
        assert first == second, name
        assert str(roots[0]).encode() not in first, f"{name} holds the project's path"
    assert json.loads((outputs[0] / "dataset.json").read_text())["raw_dir"] == "raw/rsna"


SLOW_PREPARE = """
import sys, time
import cxrdet.data.cache as cache

read = cache.read_image


def slow(*args, **kwargs):  # busy workers: on their own they would outlive the test's wait
    time.sleep(10)
    return read(*args, **kwargs)


cache.read_image = slow
from cxrdet.cli import main

sys.exit(main(sys.argv[1:]))
"""


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its new parent has not reaped it yet)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_kill_9_of_prepare_leaves_no_pool_worker_alive(demo_raw, tmp_path):
    script = tmp_path / "slow_prepare.py"
    script.write_text(SLOW_PREPARE)
    argv = ["prepare", "--source", "rsna", "--raw-dir", str(demo_raw / "rsna")]
    argv += ["--out-dir", str(tmp_path / "out"), "--image-size", "48", "--workers", "2"]
    parent = subprocess.Popen([sys.executable, str(script), *argv], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
        workers = children(parent.pid)
    assert len(workers) >= 2, "the pool never started"
    parent.kill()  # SIGKILL: the parent cannot stop its pool itself
    parent.wait()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:  # leave no orphan behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"pool workers outlived their killed parent: {survivors}"
