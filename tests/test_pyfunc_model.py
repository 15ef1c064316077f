"""The ensemble as an MLflow pyfunc model: saved from code (no pickle) offline with explicit
requirements and signature; loaded, it predicts base64 DICOM/PNG and paths exactly as the
predictor does on the same files; bad input is an error naming the row and the column.

The models are untrained (bench/serving.py `untrained_bundle`): the packaging is under
test, not learning."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from cxrdet.data.images import read_image
from cxrdet.infer.predictor import EnsemblePredictor
from cxrdet.serving.check import box_difference, output_boxes
from cxrdet.serving.inputs import image_suffix, png_example
from cxrdet.serving.package import pip_requirements, save_ensemble
from cxrdet.serving.pyfunc_model import OUTPUT_COLUMNS
from cxrdet.submission import prediction_strings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # bench scripts import their shared bench/common.py
_spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "serving.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def small_params() -> dict:
    """params.yaml with two fold detectors and one fold's classifiers, one TTA scale."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["classifier"]["folds"] = [0]
    raw["classifier"]["tta"] |= {"augmentations": 1}
    raw["detector"]["folds"] = [0, 1]
    raw["detector"]["tta"] |= {"scales": [1.0]}
    return raw


@contextmanager
def no_network() -> Iterator[list[str]]:
    """Every outbound connection attempt fails and is recorded."""
    attempts: list[str] = []
    original = socket.socket.connect

    def refuse(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(repr(address))
            raise OSError(f"network disabled in this test: {address}")
        original(self, address)

    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def images(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two demo DICOMs, and a PNG and a JPEG of a third (windowed, a different size)."""
    folder = tmp_path_factory.mktemp("images")
    dicoms = sorted((demo_raw / "rsna/stage_2_train_images").glob("*.dcm"))[:3]
    files = {p.stem: shutil.copy(p, folder / p.name) for p in dicoms[:2]}
    pixels = Image.fromarray(read_image(dicoms[2])).resize((100, 90))
    pixels.save(folder / "as_png.png")
    pixels.save(folder / "as_jpeg.jpg", quality=95)
    return {
        **{k: Path(v) for k, v in files.items()},
        "as_png": folder / "as_png.png",
        "as_jpeg": folder / "as_jpeg.jpg",
    }


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench.untrained_bundle(
        bench.flowing_params(small_params()), tmp_path_factory.mktemp("bundle") / "bundle"
    )


@pytest.fixture(scope="module")
def saved(
    bundle: Path, images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """The model saved with the network refused: (its directory, connection attempts)."""
    example = pd.DataFrame(
        {
            "image_id": ["example"],
            "image": [
                png_example(images["as_png"], {"low_percentile": 0.5, "high_percentile": 99.5}, 64)
            ],
        }
    )
    with no_network() as attempts:
        path = save_ensemble(bundle, example, tmp_path_factory.mktemp("model") / "model")
    return path, attempts


@pytest.fixture(scope="module")
def model(saved: tuple[Path, list[str]]):
    import mlflow

    return mlflow.pyfunc.load_model(str(saved[0]))


@pytest.fixture(scope="module")
def model_with_root(saved: tuple[Path, list[str]], images: dict[str, Path]):
    """The model as an operator who allows `path` inputs below the images' folder loads it."""
    import mlflow

    root = str(images["as_jpeg"].parent)
    return mlflow.pyfunc.load_model(str(saved[0]), model_config={"path_root": root})


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_model_is_saved_from_code_offline_with_explicit_requirements_and_signature(saved):
    path, attempts = saved
    assert attempts == []
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert (
        flavor["model_code_path"].endswith("model_code.py") and "python_model" not in flavor
    )  # no pickle
    assert not list(path.rglob("*.pkl"))
    assert (path / "requirements.txt").read_text().split() == pip_requirements()
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["required"]) for c in inputs] == [
        ("image_id", True),
        ("image", False),
        ("path", False),
    ]
    assert [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])] == OUTPUT_COLUMNS
    assert (path / "input_example.json").is_file() and (
        path / "code" / "cxrdet" / "serving" / "model_code.py"
    ).is_file()
    weights = list((path / "artifacts").rglob("*.pt"))
    assert len(weights) == 2 * 1 + 2  # two classifier variants of fold 0, two fold detectors
    for file in weights:
        assert "state_dict" in torch.load(file, map_location="cpu", weights_only=True)


def test_predictions_equal_the_predictor_on_dicom_png_jpeg_and_paths(
    model_with_root, bundle, images
):
    ids = list(images)
    frame = pd.DataFrame(
        {
            "image_id": ids,
            "image": [encoded(images[i]) if i != "as_jpeg" else None for i in ids],
            "path": [str(images[i]) if i == "as_jpeg" else None for i in ids],
        }
    )
    output = model_with_root.predict(frame)
    assert list(output.columns) == OUTPUT_COLUMNS and output["image_id"].tolist() == ids
    expected = EnsemblePredictor.load(bundle).predict([images[i] for i in ids], ids)
    assert len(expected.boxes) > 0  # untrained, but no gate or cut: boxes flow through
    assert box_difference(output_boxes(output), expected.boxes) is None
    assert output["PredictionString"].tolist() == [
        s for _, s in prediction_strings(expected.boxes, "rsna", image_ids=ids)
    ]
    assert output["probability"].tolist() == pytest.approx(
        expected.probabilities["opacity"].reindex(ids).tolist()
    )
    png = output.set_index("image_id").loc["as_png", "boxes"]
    assert png and all(
        b["x"] >= -1 and b["x"] + b["w"] <= 101 and b["y"] + b["h"] <= 91 for b in png
    )  # its own pixels


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (pd.DataFrame({"image": ["eA=="]}), "image_id"),
        (
            pd.DataFrame({"image_id": ["a"], "image": [None], "path": [None]}),
            "row 0 (image_id 'a'): give exactly one of",
        ),
        (
            pd.DataFrame({"image_id": ["a"], "image": ["%%% not base64"]}),
            "row 0 (image_id 'a'), column image: not valid base64",
        ),
        (
            pd.DataFrame(
                {
                    "image_id": ["a", "b"],
                    "image": ["iVBORw0KGgo=", base64.b64encode(b"hello world").decode()],
                }
            ),
            "row 1 (image_id 'b'), column image: not a DICOM, PNG or JPEG",
        ),
        (
            pd.DataFrame({"image_id": ["a"], "path": ["/nonexistent/x.dcm"]}),
            "row 0 (image_id 'a'), column path: file paths are disabled on this server",
        ),
        (
            pd.DataFrame({"image_id": ["a", "a"], "image": ["iVBORw0KGgo="] * 2}),
            "row 1 (image_id 'a'): the same image_id as row 0",
        ),
    ],
    ids=["no-image-id", "neither", "bad-base64", "not-an-image", "path-off", "duplicate-id"],
)
def test_bad_input_is_an_error_naming_row_and_column(model, frame, expected):
    with pytest.raises(MlflowException) as raised:
        model.predict(frame)
    assert expected in raised.value.message


def test_a_truncated_dicom_names_its_row(model, images):
    data = next(p for k, p in images.items() if p.suffix == ".dcm").read_bytes()
    frame = pd.DataFrame(
        {"image_id": ["cut"], "image": [base64.b64encode(data[: len(data) // 3]).decode()]}
    )
    with pytest.raises(MlflowException) as raised:
        model.predict(frame)
    assert "row 0 (image_id 'cut'), column image:" in raised.value.message


def test_file_types_are_sniffed_from_their_first_bytes(images):
    assert image_suffix(images["as_png"].read_bytes()) == ".png"
    assert image_suffix(images["as_jpeg"].read_bytes()) == ".jpg"
    assert (
        image_suffix(next(p for p in images.values() if p.suffix == ".dcm").read_bytes()) == ".dcm"
    )
    assert image_suffix(b"GIF89a" + bytes(200)) is None


def test_the_model_takes_device_and_path_root_from_its_load_config(saved, model_with_root, images):
    mlmodel = yaml.safe_load((saved[0] / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["config"] == {"device": "auto", "path_root": ""}
    assert model_with_root.unwrap_python_model().path_root == images["as_jpeg"].parent.resolve()


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusing cuda needs a machine without it")
def test_predict_from_an_mlflow_model_refuses_cuda_without_cuda(saved, images, tmp_path, capsys):
    from cxrdet.cli import main

    argv = ["predict", "--model", str(saved[0]), "--input", str(images["as_png"].parent)]
    assert main([*argv, "--out", str(tmp_path / "sub.csv"), "--device", "cuda"]) == 2
    assert "'cuda' requested but no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "sub.csv").exists()


def test_a_blank_image_is_refused_naming_its_row_and_id(model, images):
    blank = io.BytesIO()
    Image.new("L", (64, 64), 128).save(blank, format="PNG")
    frame = pd.DataFrame(
        {
            "image_id": ["fine", "blank-42"],
            "image": [encoded(images["as_png"]), base64.b64encode(blank.getvalue()).decode()],
        }
    )
    with pytest.raises(MlflowException) as raised:
        model.predict(frame)
    assert "row 1 (image_id 'blank-42'), column image: blank image" in raised.value.message
