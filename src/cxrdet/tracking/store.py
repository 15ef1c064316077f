"""The project's MLflow store: an absolute sqlite URI and a per-experiment artifact folder.

Absolute paths matter: `dvc exp run --queue` runs stages in temporary copies of the
repository, and a relative URI would write into the copy and be lost.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from cxrdet.errors import CxrdetError

# mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into this process's environment: only
# the value the process started with is the user's override (a later configure() for another
# project must not inherit the previous project's store).
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")

# Offline by default: no usage telemetry leaves the machine.
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


# MLflow 3's UI opens an experiment without this tag as a GenAI one (traces, "Detect issues");
# this project trains models, so its experiments open on the runs table. The tag and its
# values are the UI's (mlflow/server/js: ExperimentKind), not a Python constant of MLflow's.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
    uri = USER_TRACKING_URI or tracking_uri or default_tracking_uri(root)
    (store_root(root) / "mlruns").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str, root: Path) -> str:
    """The experiment's id, creating it (with artifacts under mlruns/artifacts/) if needed,
    declared a model-training experiment (EXPERIMENT_KIND_TAG) so the UI opens its runs table.

    The first touch of a sqlite store creates its schema; parallel stages (`dvc queue start
    -j N`, torchrun ranks, tuning workers) would race on it, so it happens under a file lock.
    Stages on several machines sharing a tracking server or database race on creating the
    experiment: the losers take the winner's. A store that cannot be reached raises
    CxrdetError naming it.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
    from sqlalchemy.exc import SQLAlchemyError

    uri = mlflow.get_tracking_uri()
    with _setup_lock(root):
        try:
            client = MlflowClient()
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:  # a store from before the tag
                    client.set_experiment_tag(
                        experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                    )
                return experiment.experiment_id
            # A tracking server stores (or proxies) artifacts itself; a local store keeps them in
            # mlruns/.
            served = urlparse(uri).scheme in ("http", "https")
            location = None if served else (artifact_root(root) / name).as_uri()
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException as error:
            # Stages on other machines (the lock is this machine's) may have created it meanwhile.
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise CxrdetError(f"MLflow tracking store {_shown(uri)}: {error.message}") from None
            return client.get_experiment_by_name(name).experiment_id
        except (
            SQLAlchemyError
        ) as error:  # a database URI that does not answer (after MLflow's retries)
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            raise CxrdetError(f"MLflow tracking store {_shown(uri)}: {reason}") from None


def _shown(uri: str) -> str:
    """`uri` without its password."""
    parsed = urlparse(uri)
    return uri if parsed.password is None else uri.replace(f":{parsed.password}@", ":***@", 1)


@contextmanager
def _setup_lock(root: Path) -> Iterator[None]:
    """Exclusive among this machine's processes (the sqlite store is a local file)."""
    with file_lock(store_root(root) / "mlruns" / ".setup.lock"):
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock among this machine's processes (flock: released if one dies)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(uri: str, purpose: str) -> Path:
    """A lock file for `purpose` on the store `uri`: next to a sqlite database, else (a
    server, a database elsewhere) in this machine's temp folder, one per store."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
        database = Path(parsed.path[1:])  # sqlite:////abs/x.db: /abs/x.db; sqlite:///x.db: x.db
        return database.with_name(f"{database.name}.{purpose}.lock")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"cxrdet-{purpose}-{digest}.lock"
