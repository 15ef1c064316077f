"""Prepared demo data for the training tests: the session's synthetic raw data
(conftest `demo_raw`) prepared into the canonical folders and split into folds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrdet.data.folds import make_folds
from cxrdet.data.prepare import PrepareOptions, prepare_dataset
from cxrdet.io import write_parquet

CACHE_SIZE = 64  # small images keep the few-epoch trainings of the tests quick


def prepare_project(raw: Path, root: Path, folds: int = 4, image_size: int = CACHE_SIZE) -> Path:
    """data/prepared/{detect,pretrain} and data/split/folds.parquet under `root`."""
    options = PrepareOptions(image_size=image_size, workers=1, progress=False, sample_grid=0)
    detect = prepare_dataset("rsna", raw / "rsna", root / "data/prepared/detect", options)
    prepare_dataset("nih", raw / "nih", root / "data/prepared/pretrain", options)
    split = make_folds(detect.images, detect.boxes, folds=folds, holdout_fraction=0.15, seed=42)
    write_parquet(split, root / "data/split/folds.parquet")
    return root


@pytest.fixture(scope="module")
def prepared_root(demo_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_project(demo_raw, tmp_path_factory.mktemp("prepared"))
