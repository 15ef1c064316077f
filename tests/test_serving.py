"""`mlflow models serve -m models:/cxrdet-rsna@champion --env-manager local` on 127.0.0.1:
a DICOM and a PNG get the boxes the in-process model gives; garbage (not an image, a
truncated DICOM, a missing column) gets HTTP 4xx naming the problem, and the server still
answers the next good request. The model (untrained, bench/serving.py) is registered in a
sqlite store, so the server resolves the alias from the registry."""

from __future__ import annotations

import base64

import mlflow
import pandas as pd
import pytest

from cxrdet.serving.check import box_difference, output_boxes
from cxrdet.serving.inputs import frame_of, png_example
from cxrdet.serving.package import log_ensemble
from cxrdet.serving.server import invoke, model_server, post
from cxrdet.tracking import registry
from cxrdet.tracking.store import configure, ensure_experiment
from test_pyfunc_model import bench, images, small_params  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
NAME = "cxrdet-rsna"


@pytest.fixture(scope="module")
def served(images, tmp_path_factory):  # noqa: F811
    """(server URL, the in-process model) of the registered champion."""
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
    local = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
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
