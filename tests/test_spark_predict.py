"""`cxrdet predict --engine spark`: the registered model as an MLflow Spark UDF on
`local[2]` (OpenJDK 17) writes the same submission as `cxrdet predict`, the model loaded
from `models:/cxrdet-rsna@champion` on the tracking server backed by PostgreSQL; a folder
or a table of image paths; bad input (no Java, no MLflow model, a table without its
columns) exits 2 naming it. The model is untrained (bench/serving.py `untrained_bundle`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from cxrdet.cli import main as cxrdet_main
from cxrdet.errors import CxrdetError
from cxrdet.serving.inputs import png_example
from cxrdet.serving.package import log_ensemble
from cxrdet.serving.spark import image_table
from cxrdet.tracking import registry
from cxrdet.tracking.store import configure, ensure_experiment
from test_pyfunc_model import bench, images, small_params  # noqa: F401  (fixture)

pytest_plugins = ["postgres"]
NAME = "cxrdet-rsna"


def test_a_table_of_image_paths_is_read_from_parquet_or_csv(images, tmp_path):  # noqa: F811
    folder = images["as_png"].parent
    table = image_table(folder)
    assert table["image_id"].tolist() == sorted(images, key=lambda k: images[k].name)
    table.to_parquet(tmp_path / "images.parquet")
    table.to_csv(tmp_path / "images.csv", index=False)
    assert image_table(tmp_path / "images.parquet").equals(table)
    assert image_table(tmp_path / "images.csv").equals(table)
    table.rename(columns={"path": "file"}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CxrdetError, match=r"bad\.csv: no column 'path'"):
        image_table(tmp_path / "bad.csv")
    pd.concat([table, table]).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(CxrdetError, match="appears more than once"):
        image_table(tmp_path / "twice.csv")
    with pytest.raises(CxrdetError, match="not a folder of images nor"):
        image_table(tmp_path / "missing")


@pytest.mark.parametrize(
    "model, environment, message",
    [
        (".", {}, "--engine spark scores an MLflow model"),
        ("models:/cxrdet-rsna@champion", {"PATH": "", "JAVA_HOME": ""}, "needs Java 17 or later"),
    ],
)
def test_spark_engine_refuses_what_it_cannot_run_with_exit_2(
    images,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
    model,
    environment,
    message,
):
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    argv = [
        "predict",
        "--engine",
        "spark",
        "--model",
        model,
        "--input",
        str(images["as_png"].parent),
        "--out",
        str(tmp_path / "sub.csv"),
    ]
    assert cxrdet_main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.slow
def test_spark_engine_writes_the_same_submission_as_cxrdet_predict(
    tracking_server,
    images,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    monkeypatch.setattr("cxrdet.tracking.store.USER_TRACKING_URI", None)
    configure(tmp_path, tracking_server)
    try:
        bundle = bench.untrained_bundle(bench.flowing_params(small_params()), tmp_path / "bundle")
        example = pd.DataFrame(
            {
                "image_id": ["example"],
                "image": [
                    png_example(
                        images["as_png"], {"low_percentile": 0.5, "high_percentile": 99.5}, 64
                    )
                ],
            }
        )
        with mlflow.start_run(experiment_id=ensure_experiment("spark-test", tmp_path)):
            info = log_ensemble(bundle, example)
        version = registry.register_version(NAME, info.model_uri, {registry.HOLDOUT_TAG: "h"})
        registry.decide(NAME, str(version.version), registry.gate(NAME, str(version.version), 0.01))
    finally:
        mlflow.set_tracking_uri(None)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env |= {
        "MLFLOW_TRACKING_URI": tracking_server,
        "CXRDET_ROOT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    holdout = images["as_png"].parent
    common = [
        "--model",
        f"models:/{NAME}@champion",
        "--input",
        str(holdout),
        "--device",
        "cpu",
        "--no-progress",
    ]

    def predict(*extra: str, out: Path) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "cxrdet.cli", "predict", *common, "--out", str(out), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    # One image per batch in both (Spark: per Arrow batch): an untrained model's near-equal
    # scores make its top boxes, hence the fused ones, flip with another batch shape's float noise.
    predict("--chunk", "1", out=tmp_path / "local.csv")
    predict(
        "--engine",
        "spark",
        "--spark-master",
        "local[2]",
        "--chunk",
        "1",
        out=tmp_path / "spark.csv",
    )
    local = (tmp_path / "local.csv").read_text()
    assert len(local.splitlines()) == len(images) + 1 and any(
        len(r.split(",")[1]) > 0 for r in local.splitlines()[1:]
    )
    assert (tmp_path / "spark.csv").read_text() == local
