"""The register stage on a small evaluated project (untrained fold models, as in
test_ensemble_stages.py): run twice, the second version is challenger and champion stays
(same score: no gain of min_delta); the registered model, loaded by alias in a fresh
process with the network refused, writes the evaluate stage's holdout submission again
through `cxrdet predict --model models:/cxrdet-rsna@champion`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrdet.data.folds import HOLDOUT
from cxrdet.serving.check import box_difference, submission_boxes
from test_ensemble_stages import run, stage, tiny_params, write_fold_outputs

from prepared_demo import prepare_project

pytestmark = pytest.mark.slow
NAME = "cxrdet-rsna"
# A fresh interpreter whose sockets refuse every outbound connection, then `cxrdet ...`.
OFFLINE_CXRDET = """
import socket, sys
def refuse(self, address):
    raise OSError(f"network disabled in this test: {address}")
socket.socket.connect = refuse
from cxrdet.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def project(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = prepare_project(demo_raw, tmp_path_factory.mktemp("register"), folds=2)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(demo_raw / "rsna")))
    write_fold_outputs(root)
    run(root, *stage("tune_ensemble.py"))
    run(root, *stage("evaluate.py"))
    return root


def test_register_twice_then_predict_by_alias_offline_equals_evaluate(project, tmp_path):
    run(project, *stage("register.py"))
    first = json.loads((project / "results/register/register.json").read_text())
    assert first["version"] == 1 and first["promoted"] and first["champion"] == 1
    done = run(project, *stage("register.py"))
    second = json.loads((project / "results/register/register.json").read_text())
    assert second["version"] == 2 and not second["promoted"] and second["champion"] == 1
    assert "does not beat champion version 1" in second["reason"] and "not promoted" in done.stdout
    assert {"cxrdet.holdout_hash", "cxrdet.data_hash", "cxrdet.params_hash"} <= set(second["tags"])
    # The commit is on the version in MLflow: register.json reproduces byte for byte (dvc.lock).
    assert "cxrdet.git_commit" not in second["tags"] and "run_id" not in second

    listing = json.loads(
        run(project, sys.executable, "-m", "cxrdet.cli", "registry", "list", "--json").stdout
    )
    rows = {row["version"]: row for row in listing["versions"]}
    assert rows[1]["aliases"] == ["champion"] and rows[2]["aliases"] == ["challenger"]
    metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
    assert rows[2]["score"] == pytest.approx(metrics["rsna_score"]) and rows[2]["metrics"][
        "auc"
    ] == pytest.approx(metrics["auc"])

    split = pd.read_parquet(project / "data/split/folds.parquet")
    holdout = sorted(split.loc[split["fold"] == HOLDOUT, "image_id"])
    images = tmp_path / "holdout"
    images.mkdir()
    raw = Path(yaml.safe_load((project / "params.yaml").read_text())["data"]["detect"]["raw_dir"])
    for image_id in holdout:
        shutil.copy(raw / "stage_2_train_images" / f"{image_id}.dcm", images)
    done = run(
        project,
        sys.executable,
        "-c",
        OFFLINE_CXRDET,
        "predict",
        "--model",
        f"models:/{NAME}@champion",
        "--input",
        str(images),
        "--format",
        "rsna",
        "--out",
        str(tmp_path / "sub.csv"),
        "--no-progress",
    )
    assert f"models:/{NAME}@champion -> version 1" in done.stderr
    expected = submission_boxes(
        project / "results/evaluate/submission.csv", "rsna", ["Lung Opacity"], holdout
    )
    assert len(expected) > 0
    assert (
        box_difference(
            submission_boxes(tmp_path / "sub.csv", "rsna", ["Lung Opacity"], holdout), expected
        )
        is None
    )
