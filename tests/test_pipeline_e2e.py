"""The demo pipeline end to end: `dvc repro` in a temporary clone of the working tree."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from worktree import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(demo_pipeline: tuple[Path, dict]) -> tuple[Path, dict]:
    """The demo pipeline's clone (conftest.py), shared with the other slow tests that read it."""
    return demo_pipeline


def test_repro_writes_every_stage_output(clone):
    root, _ = clone
    for path in [
        "data/raw/demo/rsna/stage_2_train_labels.csv",
        "data/raw/demo/samples.png",
        "data/prepared/detect/images.parquet",
        "data/prepared/pretrain/targets.parquet",
        "data/prepared/detect/samples.png",
        "data/split/folds.parquet",
        "results/split/split.json",
        "results/tuning/ensemble.json",
        "results/evaluate/metrics.json",
        "results/evaluate/submission.csv",
        "results/evaluate/overlay.png",
        "results/register/register.json",
        "dvc.lock",
    ]:
        assert (root / path).exists(), path
    folds = pd.read_parquet(root / "data/split/folds.parquet")
    images = pd.read_parquet(root / "data/prepared/detect/images.parquet")
    assert len(folds) == len(images) > 0
    registered = json.loads((root / "results/register/register.json").read_text())
    assert (
        registered["version"] == 1 and registered["champion"] == 1
    )  # the first version is champion


def test_every_stage_is_an_mlflow_run_with_identity_tags(clone):
    root, _ = clone
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        tags = db.execute(
            "SELECT r.name, t.key, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid"
        ).fetchall()
    by_run: dict[str, dict[str, str]] = {}
    for name, key, value in tags:
        by_run.setdefault(name, {})[key] = value
    assert {"synthesize", "prepare@detect", "prepare@pretrain", "split"} <= set(by_run)
    for name in ("prepare@detect", "split"):
        assert by_run[name]["mlflow.source.git.commit"] == commit
        assert len(by_run[name]["cxrdet.data_hash"]) == 16
    artifacts = root / "mlruns" / "artifacts"
    assert list(artifacts.rglob("samples.png")), "sample grids logged as artifacts"


def test_second_repro_is_up_to_date(clone):
    root, env = clone
    status = run(["dvc", "status"], root, env).stdout
    assert "up to date" in status.lower() or status.strip() == "", status


def test_evaluate_numbers_equal_cxrdet_evaluate_on_its_submission(clone):
    root, env = clone
    metrics = json.loads((root / "results/evaluate/metrics.json").read_text())
    report = json.loads(run([*metrics["evaluate_command"].split(), "--json"], root, env).stdout)
    assert report["score"] == metrics["rsna_score"]
    assert metrics["ablation"]["ensemble"]["score"] == metrics["rsna_score"]
    tuned = json.loads((root / "results/tuning/ensemble.json").read_text())
    assert (
        tuned["untuned"]["rsna_score"] is None
        or tuned["rsna_score"] >= tuned["untuned"]["rsna_score"]
    )


def commit_all(root: Path, env: dict, message: str) -> None:
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], root, env)


def test_a_second_checkout_pulls_data_and_weights_and_reproduces_the_metrics(clone, tmp_path):
    root, env = clone
    # A weights file the user brings, versioned like the data.
    weights = root / "models/imported/nih_test_resnet.pt"
    shutil.copy2(root / "models/pretrained/test_resnet.pt", weights)
    run(["dvc", "add", str(weights.relative_to(root))], root, env)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], root, env)
    commit_all(root, env, "pipeline results, imported weights, remote")
    run(["dvc", "push"], root, env)

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(root), str(second)], tmp_path, env)
    run(["dvc", "pull"], second, env)
    for pulled in (
        "models/imported/nih_test_resnet.pt",
        "data/split/folds.parquet",
        "models/detector/fold0/model.pt",
    ):
        assert (second / pulled).read_bytes() == (root / pulled).read_bytes(), pulled
    # Same seeds on CPU: retraining on the second checkout gives the first's numbers.
    run(["dvc", "repro", "--force", "--single-item", "pretrain", "train_detector@0"], second, env)
    for metrics in ("results/pretrain/metrics.json", "results/detector/folds/fold0/metrics.json"):
        assert json.loads((second / metrics).read_text()) == json.loads(
            (root / metrics).read_text()
        ), metrics


def test_queued_experiments_log_to_the_projects_store_tagged_with_their_names(clone):
    root, env = clone
    commit_all(root, env, "baseline for experiments")
    for seed in (1, 2):
        run(["dvc", "exp", "run", "--queue", "-S", f"split.seed={seed}", "split"], root, env)
    run(["dvc", "queue", "start", "-j", "2"], root, env)
    deadline = time.monotonic() + 900
    while True:
        status = run(["dvc", "queue", "status"], root, env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert status.count("Success") == 2, status
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        names = db.execute(
            "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.name = 'split' AND t.key = 'cxrdet.dvc_exp'"
        ).fetchall()
    shown = run(["dvc", "exp", "show", "--json"], root, env).stdout
    assert len({name for (name,) in names}) == 2
    assert all(name in shown for (name,) in names)


def _running_stage_pid(root: Path, run_name: str) -> int | None:
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        found = db.execute(
            "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.name = ? AND r.status = 'RUNNING' AND t.key = 'cxrdet.pid'",
            (run_name,),
        ).fetchall()
    return int(found[0][0]) if found else None


def test_a_fold_stage_killed_mid_training_resumes_on_the_next_repro(clone, tmp_path):
    root, env = clone
    metrics = root / "results/detector/folds/fold1/metrics.json"
    uninterrupted = json.loads(metrics.read_text())
    checkpoint = root / "models/checkpoints/train_detector@1/retinanet/last.pt"  # <stage>/<family>/
    # --force: this fold finished before, so DVC would check its cached result out instead of
    # running.
    stage = ["dvc", "repro", "--single-item", "--force", "train_detector@1"]
    # SIGTERM first (the stage closes its own run), then SIGKILL (it cannot: the next run does).
    for attempt, signum in enumerate((signal.SIGTERM, signal.SIGKILL)):
        seen = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        with open(tmp_path / f"attempt{attempt}.log", "w") as log:
            process = subprocess.Popen(
                stage, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 600
        while not (checkpoint.exists() and checkpoint.stat().st_mtime_ns != seen):  # an epoch ended
            assert process.poll() is None, (tmp_path / f"attempt{attempt}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.5)
        pid = _running_stage_pid(root, "train_detector@1")
        assert pid is not None
        os.kill(pid, signum)
        assert process.wait(timeout=300) != 0
        assert checkpoint.exists()

    done = run(stage, root, env)
    assert "resuming from" in done.stdout + done.stderr
    assert (
        json.loads(metrics.read_text()) == uninterrupted
    )  # the same numbers as a run never killed
    assert not checkpoint.parent.parent.exists()
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        statuses = [
            status
            for (status,) in db.execute(
                "SELECT status FROM runs WHERE name = 'train_detector@1' ORDER BY start_time"
            )
        ]
    assert statuses[-3:] == ["KILLED", "KILLED", "FINISHED"] and "RUNNING" not in statuses


def test_the_demo_detector_learns(clone):
    """Issue 21's bar for the demo (its fixed seeds): the detector alone, out of fold."""
    root, _ = clone
    metrics = json.loads((root / "results/detector/metrics.json").read_text())
    assert metrics["oof_rsna_score"] >= 0.3, metrics["oof_rsna_score"]
    assert metrics["oof_map"] >= 0.5, metrics["oof_map"]
    assert metrics["oof_rsna_score"] > metrics["baseline"]["oof_rsna_score"] + 0.2
