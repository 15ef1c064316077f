"""Log (or save) the ensemble as an MLflow pyfunc model, offline.

Models from code: the model is cxrdet/serving/model_code.py, the cxrdet package itself
(code_paths, so a version keeps the code its bundle was written for, and rolling back
loads old bundles with old code) and the predictor directory as the `bundle` artifact.
Signature and input example are explicit; pip requirements are cxrdet's own dependencies
pinned to the installed versions, so MLflow neither infers requirements (which loads the
model in a subprocess) nor reaches the network.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any

import pandas as pd
from packaging.requirements import Requirement

import cxrdet
from cxrdet.errors import CxrdetError
from cxrdet.serving.path_root import CONFIG_KEY
from cxrdet.serving.pyfunc_model import BUNDLE, SIGNATURE

MODEL_CODE = Path(__file__).with_name("model_code.py")


def pip_requirements() -> list[str]:
    """cxrdet's dependencies (no extras) as `name==installed version`."""
    pinned = []
    for line in requires("cxrdet") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra (tests): not needed to serve
        try:
            pinned.append(f"{requirement.name}=={version(requirement.name)}")
        except PackageNotFoundError:
            raise CxrdetError(
                f"{requirement.name} (a cxrdet dependency) is not installed; run `make setup`"
            ) from None
    return pinned


@contextmanager
def model_arguments(bundle: Path, example: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Keyword arguments of mlflow.pyfunc.log_model/save_model for the predictor directory
    `bundle` and the input example `example` (valid while the context is open)."""
    with tempfile.TemporaryDirectory(prefix="cxrdet-code-") as scratch:
        code = Path(scratch) / "cxrdet"  # the package without caches
        shutil.copytree(
            Path(cxrdet.__file__).parent,
            code,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        yield {
            "python_model": str(MODEL_CODE),
            "artifacts": {BUNDLE: str(bundle)},
            "code_paths": [str(code)],
            # MLflow lets load_model(model_config=...) override only the keys logged here
            "model_config": {"device": "auto", CONFIG_KEY: ""},
            "signature": SIGNATURE,
            "input_example": example,
            "pip_requirements": pip_requirements(),
        }


def log_ensemble(bundle: Path, example: pd.DataFrame, name: str = "ensemble") -> Any:
    """Log the model in the active run as `name` (the run's and the experiment's Models tab:
    say what it is, e.g. `cxrdet-rsna-ensemble`); returns MLflow's ModelInfo (model_uri,
    model_id)."""
    import mlflow

    with model_arguments(bundle, example) as arguments:
        return mlflow.pyfunc.log_model(name=name, **arguments)


def save_ensemble(bundle: Path, example: pd.DataFrame, path: Path) -> Path:
    """Write the model to the local directory `path` (no tracking store involved)."""
    import mlflow

    with model_arguments(bundle, example) as arguments:
        mlflow.pyfunc.save_model(str(path), **arguments)
    return Path(path)
