"""Load the ensemble from anything `cxrdet predict --model` accepts."""

from __future__ import annotations

import re
from pathlib import Path

from cxrdet.infer.predictor import EnsemblePredictor
from cxrdet.runtime.device import select_device

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # models:/..., runs:/..., file:///...
MLMODEL = "MLmodel"


def is_mlflow_model(source: str) -> bool:
    """A model URI, or a local MLflow model directory."""
    return bool(URI.match(source)) or (Path(source) / MLMODEL).is_file()


def load_predictor(source: str, root: Path, device: str = "auto") -> tuple[EnsemblePredictor, str]:
    """(the predictor, what was loaded) of a project root after `dvc repro`, a predictor
    directory (predictor.json), an MLflow model directory, or a model URI. Registry URIs
    resolve against the project's store (or MLFLOW_TRACKING_URI); an alias is resolved to
    the version it points to now, and that version is loaded."""
    if not is_mlflow_model(source):
        return EnsemblePredictor.load(Path(source), device=device), str(source)
    import mlflow

    from cxrdet.tracking.registry import resolve
    from cxrdet.tracking.store import configure

    select_device(device)  # refuse cuda without CUDA before loading, as a predictor directory does
    configure(root)
    uri, note = resolve(source)
    model = mlflow.pyfunc.load_model(uri, model_config={"device": device})
    return model.unwrap_python_model().predictor, note or uri
