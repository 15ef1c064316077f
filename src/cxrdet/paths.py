"""Where the project lives: every stage resolves paths against the project root."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_MARKERS = ("dvc.yaml", "params.yaml")


def project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: cwd) holding dvc.yaml or params.yaml.

    CXRDET_ROOT overrides the search, for tools run from elsewhere.
    """
    if override := os.environ.get("CXRDET_ROOT"):
        return Path(override).resolve()
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if any((directory / marker).exists() for marker in ROOT_MARKERS):
            return directory
    return here


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """`path` as given when absolute, else relative to the project root."""
    path = Path(path)
    return path if path.is_absolute() else (root or project_root()) / path


# Every stage's inputs and outputs, relative to the project root: the paths dvc.yaml names
# (tests/test_dvc_deps.py checks that it does). prepare@<dataset> writes PREPARED/<dataset>.
PREPARED = "data/prepared"
PREPARED_DETECT = "data/prepared/detect"  # what classifiers and detectors train on
PREPARED_PRETRAIN = "data/prepared/pretrain"  # NIH-format data for pretraining
FOLDS = "data/split/folds.parquet"
SPLIT_REPORT = "results/split/split.json"
PRETRAINED = "models/pretrained"  # a backbone per name: <backbone>.pt
PRETRAIN_METRICS = "results/pretrain/metrics.json"
CLASSIFIER_MODELS = "models/classifier"
CLASSIFIER_RESULTS = "results/classifier"
CLASSIFIER_FOLDS = "results/classifier/folds"
ANCHORS = "results/tuning/anchors.json"
DETECTOR_MODELS = "models/detector"
DETECTOR_RESULTS = "results/detector"
DETECTOR_FOLDS = "results/detector/folds"
DETECTOR_FINAL = "results/detector/final"
DETECTOR_FINAL_MODELS = "models/detector/final"
ENSEMBLE = "results/tuning/ensemble.json"
EVALUATE = "results/evaluate"
REGISTER = "results/register/register.json"
# Not a DVC path: a training stage's resumable state (CHECKPOINTS/<stage>), removed when it ends.
CHECKPOINTS = "models/checkpoints"
