"""`mlflow models serve -m models:/cxrdet-rsna@champion --env-manager local` on 127.0.0.1:
a DICOM and a PNG get the boxes the in-process model gives; garbage (not an image, a
truncated DICOM, a missing column) gets HTTP 4xx naming the problem, and the server still
answers the next good request. The model (untrained, bench/serving.py) is registered in a
sqlite store, so the server resolves the alias from the registry."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from cxrdet.serving.check import box_difference, output_boxes
from cxrdet.serving.inputs import frame_of, png_example
from cxrdet.serving.package import log_ensemble
from cxrdet.serving.server import free_port, invoke, model_server, post, stop, wait_ready
from cxrdet.tracking import registry
from cxrdet.tracking.store import configure, ensure_experiment
from test_pyfunc_model import bench, images, small_params  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
NAME = "cxrdet-rsna"


@pytest.fixture(scope="module")
def registered(images, tmp_path_factory):  # noqa: F811
    """(a project root whose store holds the champion, its tracking URI, the in-process model)."""
    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = configure(root)
    bundle = bench.untrained_bundle(bench.flowing_params(small_params()), root / "bundle")
    example = pd.DataFrame(
        {
            "image_id": ["example"],
            "image": [
                png_example(images["as_png"], {"low_percentile": 0.5, "high_percentile": 99.5}, 64)
            ],
        }
    )
    with mlflow.start_run(experiment_id=ensure_experiment("serving-test", root)):
        info = log_ensemble(bundle, example)
    version = registry.register_version(NAME, info.model_uri, {registry.HOLDOUT_TAG: "h"})
    registry.decide(NAME, str(version.version), registry.gate(NAME, str(version.version), 0.01))
    return root, uri, mlflow.pyfunc.load_model(f"models:/{NAME}@champion")


@pytest.fixture(scope="module")
def served(registered):
    """(server URL, the in-process model) of the registered champion."""
    _, uri, local = registered
    with model_server(f"models:/{NAME}@champion", env={"MLFLOW_TRACKING_URI": uri}) as url:
        yield url, local


def predictions(body: dict) -> pd.DataFrame:
    return pd.DataFrame(body["predictions"])


def test_served_boxes_equal_the_in_process_model_for_a_dicom_and_a_png(served, images):
    url, local = served
    dicom = next(k for k, p in images.items() if p.suffix == ".dcm")
    for key in (dicom, "as_png"):
        frame = frame_of([key], [images[key]])
        status, body = invoke(url, frame)
        assert status == 200, body
        got, expected = predictions(body), local.predict(frame)
        assert len(expected.loc[0, "boxes"]) > 0
        assert box_difference(output_boxes(got), output_boxes(expected)) is None
        assert got["PredictionString"].tolist() == expected["PredictionString"].tolist()


def test_garbage_gets_4xx_naming_the_problem_and_the_server_goes_on(served, images):
    url, _ = served
    dicom = next(p for p in images.values() if p.suffix == ".dcm")
    data = dicom.read_bytes()
    garbage = [
        (
            pd.DataFrame(
                {
                    "image_id": ["junk"],
                    "image": [base64.b64encode(b"just some text, not pixels").decode()],
                }
            ),
            "row 0 (image_id 'junk'), column image: not a DICOM, PNG or JPEG",
        ),
        (
            pd.DataFrame(
                {"image_id": ["cut"], "image": [base64.b64encode(data[: len(data) // 3]).decode()]}
            ),
            "row 0 (image_id 'cut'), column image:",
        ),
        (pd.DataFrame({"image": [base64.b64encode(data).decode()]}), "image_id"),
    ]
    for frame, expected in garbage:
        status, body = invoke(url, frame)
        assert 400 <= status < 500, (status, body)
        assert expected in body["message"], body["message"][-500:]
    status, body = post(url, {"not_a_dataframe": 1})
    assert 400 <= status < 500
    status, body = invoke(url, frame_of(["again"], [dicom]))
    assert status == 200 and predictions(body)["image_id"].tolist() == ["again"]


def readme_serve_command() -> str:
    """The README's one `cxrdet serve` command line, as a user would type it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith(".venv/bin/cxrdet serve ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_readmes_serve_command_works_as_typed(registered, images, tmp_path):
    """Run from a project root whose .venv is this environment, the venv not on PATH; only
    the port is swapped for a free one. The served model refuses `path` by default."""
    root, _, local = registered
    command = readme_serve_command()
    assert f"models:/{NAME}@champion" in command and re.search(r" -p \d+", command)
    port = free_port()
    typed = re.sub(r" -p \d+", f" -p {port}", command)
    venv = root / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env |= {"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            ["bash", "-c", typed],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, log, 300.0)
            dicom = next(p for p in images.values() if p.suffix == ".dcm")
            status, body = invoke(url, frame_of(["p1"], [dicom]))
            assert status == 200, body
            expected = local.predict(frame_of(["p1"], [dicom]))
            assert box_difference(output_boxes(predictions(body)), output_boxes(expected)) is None
            status, body = invoke(url, frame_of(["p1"], [dicom], column="path"))
            assert status == 400 and "file paths are disabled" in body["message"]
        finally:
            stop(process)
