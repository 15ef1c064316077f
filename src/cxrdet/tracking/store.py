"""The project's MLflow store: an absolute sqlite URI and a per-experiment artifact folder.

Absolute paths matter: `dvc exp run --queue` runs stages in temporary copies of the
repository, and a relative URI would write into the copy and be lost.
"""

from __future__ import annotations

import os
from pathlib import Path

# Offline by default: no usage telemetry leaves the machine.
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"


def artifact_root(root: Path) -> Path:
    return (root / "mlruns" / "artifacts").resolve()


def configure(root: Path, tracking_uri: str | None = None) -> str:
    """Point MLflow at the project store (MLFLOW_TRACKING_URI wins) and turn telemetry off."""
    import mlflow

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or default_tracking_uri(root)
    (root / "mlruns").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str, root: Path) -> str:
    """The experiment's id, creating it (with artifacts under mlruns/artifacts/) if needed.

    Creating it up front, before any parallel workers, avoids sqlite races on the schema.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root(root) / name
    try:
        return client.create_experiment(name, artifact_location=location.as_uri())
    except MlflowException:
        # Another worker created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
