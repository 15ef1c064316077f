"""The MLflow UI after the demo pipeline, as a user meets it: `cxrdet ui` (what `make ui`
runs) serves the demo's store on a free loopback port; its REST API and one page rendered
by headless Chromium show what issue 17 asked for."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TRAINING = ("train_classifier@", "train_detector@", "pretrain", "tune_anchors")
FOLD_STAGES = ("train_classifier@", "train_detector@")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(base: str, path: str, body: dict | None = None) -> dict:
    """One REST call: GET, or POST with a JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def ui(demo_pipeline: tuple[Path, dict]) -> Iterator[tuple[str, str]]:
    """(server base URL, the runs-table URL `cxrdet ui` printed)."""
    root, env = demo_pipeline
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("cxrdet")), "ui", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = server.stdout.readline().strip()
        assert printed.startswith("runs table: "), printed
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, "cxrdet ui exited"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{base} did not answer"
                time.sleep(1)
        yield base, printed.removeprefix("runs table: ")
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def runs(ui: tuple[str, str]) -> tuple[str, list[dict]]:
    """(experiment id, every run of the demo's experiment) through the REST API."""
    base, _ = ui
    experiment = call(base, "experiments/get-by-name?experiment_name=cxrdet")["experiment"]
    found = call(
        base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000}
    )
    return experiment["experiment_id"], found["runs"]


def tags_of(entity: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in entity.get("tags", [])}


def named(runs: list[dict], *prefixes: str) -> list[dict]:
    return [
        run
        for run in runs
        if run["info"]["run_name"].startswith(prefixes) and run["info"]["status"] == "FINISHED"
    ]


def test_the_experiment_is_declared_model_training_and_the_url_is_its_runs_table(ui):
    base, url = ui
    experiment = call(base, "experiments/get-by-name?experiment_name=cxrdet")["experiment"]
    assert tags_of(experiment)["mlflow.experimentKind"] == "custom_model_development"
    runs = f"{base}/#/experiments/{experiment['experiment_id']}/runs"
    assert url == f"{runs}?workflowType=machine_learning"


def test_training_runs_have_their_dataset_with_the_data_hash_as_digest(runs):
    _, found = runs
    training = named(found, *TRAINING)
    assert {run["info"]["run_name"] for run in training} >= {"train_detector@0", "pretrain"}
    for run in training:
        inputs = run.get("inputs", {}).get("dataset_inputs", [])
        digests = {entry["dataset"]["digest"] for entry in inputs}
        assert digests == {tags_of(run["data"])["cxrdet.data_hash"]}, run["info"]["run_name"]


def test_every_fold_stage_has_its_logged_models(ui, runs):
    base, _ = ui
    experiment_id, found = runs
    models = call(base, "logged-models/search", {"experiment_ids": [experiment_id]})["models"]
    by_run: dict[str, list[str]] = {}
    for model in models:
        by_run.setdefault(model["info"]["source_run_id"], []).append(model["info"]["name"])
    stages = named(found, *FOLD_STAGES)
    assert len(stages) == 6  # 3 classifier and 3 detector folds
    for run in stages:
        fold = run["info"]["run_name"].split("@")[1]
        assert by_run.get(run["info"]["run_id"]), run["info"]["run_name"]
        assert all(name.endswith(f"-fold{fold}") for name in by_run[run["info"]["run_id"]])


def test_tuning_runs_name_their_best_trial_its_params_and_value(runs):
    _, found = runs
    for stage in ("tune_anchors", "tune_ensemble"):
        (run,) = named(found, stage)
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        assert any(key.startswith("best.trial.") for key in params), stage
        assert {"best.trial.number", "best.trial.value"} <= set(metrics), stage
    trials = {
        run["info"]["run_name"].rsplit("-", 1)[0]
        for run in found
        if "-trial-" in run["info"]["run_name"]
    }
    assert trials == {"anchor-trial", "ens-trial"}


def test_the_registered_version_is_described(ui):
    base, _ = ui
    versions = call(base, "model-versions/search?filter=name%3D%27cxrdet-rsna%27")["model_versions"]
    assert versions and all("Holdout rsna_score" in v.get("description", "") for v in versions)
    model = call(base, "registered-models/get?name=cxrdet-rsna")["registered_model"]
    assert "champion: version 1" in model["description"]


def test_metric_names_follow_the_scheme_and_nested_names_are_short(runs):
    _, found = runs
    names = {m["key"] for run in found for m in run["data"].get("metrics", [])}
    assert names and not [name for name in names if "/" in name or " " in name]
    assert "fold" not in names and "holdout.rsna_score" in names and "train.loss" in names
    nested = [run for run in found if "mlflow.parentRunId" in tags_of(run["data"])]
    assert nested and all(len(run["info"]["run_name"]) <= 20 for run in nested)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    chromium() is None,
    reason="no chromium on PATH: `make browser` installs Debian's package (needs root and apt)",
)
def test_the_runs_table_is_what_opens_in_a_browser(ui, tmp_path):
    _, url = ui
    page = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1600,1000",
            "--virtual-time-budget=30000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "train_detector@0" in page and "evaluate" in page  # rows of the runs table
    assert "Detect issues" not in page and "No traces" not in page  # not the GenAI view
