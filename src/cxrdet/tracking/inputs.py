"""The dataset a run trained on, as an MLflow dataset input (the run's Datasets column).

Its digest is the data hash `prepare` computes (cxrdet.data_hash), so the UI's dataset
column and the runs' tag agree, and two runs trained on the same data show the same digest.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd


def log_dataset(
    images: pd.DataFrame,
    *,
    name: str,
    data_hash: str,
    source: Path,
    context: str = "training",
) -> None:
    """Log `images` (the prepared image table) as dataset `name` of the active run, read from
    `source` (the prepared folder) with digest `data_hash`."""
    import mlflow

    # The image table, not the pixels: MLflow records the schema and a profile of what it is
    # given. Its warnings (a file URI matches two equal source classes; integer columns in the
    # inferred schema) concern model signatures and sources we do not resolve back.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            images, source=source.resolve().as_uri(), name=name, digest=data_hash
        )
    mlflow.log_input(dataset, context=context)
