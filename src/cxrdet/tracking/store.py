"""The project's MLflow store: an absolute sqlite URI and a per-experiment artifact folder.

Absolute paths matter: `dvc exp run --queue` runs stages in temporary copies of the
repository, and a relative URI would write into the copy and be lost.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

# Offline by default: no usage telemetry leaves the machine.
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


# `dvc exp run --queue/--temp` runs stages in <project>/.dvc/tmp/exps/<tmp>/, a copy that
# is deleted afterwards: its runs belong in the project's store, not in the copy's.
QUEUE_COPY_PARTS = (".dvc", "tmp", "exps")


def store_root(root: Path) -> Path:
    """The project whose mlruns/ holds the store: `root`, or the project `root` is a DVC
    experiment copy of."""
    parts = root.resolve().parts
    for index in range(len(parts) - len(QUEUE_COPY_PARTS)):
        if parts[index : index + len(QUEUE_COPY_PARTS)] == QUEUE_COPY_PARTS:
            return Path(*parts[:index])
    return root.resolve()


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{store_root(root) / 'mlruns' / 'mlflow.db'}"


def artifact_root(root: Path) -> Path:
    return store_root(root) / "mlruns" / "artifacts"


def configure(root: Path, tracking_uri: str | None = None) -> str:
    """Point MLflow at the project store (MLFLOW_TRACKING_URI wins) and turn telemetry off."""
    import mlflow

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or default_tracking_uri(root)
    (store_root(root) / "mlruns").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str, root: Path) -> str:
    """The experiment's id, creating it (with artifacts under mlruns/artifacts/) if needed.

    Creating it up front, before any parallel workers, avoids sqlite races on the schema.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A tracking server stores (or proxies) artifacts itself; a local store keeps them in mlruns/.
    served = urlparse(mlflow.get_tracking_uri()).scheme in ("http", "https")
    location = None if served else (artifact_root(root) / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another worker created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
