"""One MLflow run per stage, tagged so that MLflow and DVC agree on what was run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cxrdet.tracking.names import metric_key
from cxrdet.tracking.store import configure, ensure_experiment

GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag, shown in its UI
HOST_TAG = "cxrdet.host"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_ID"
PID_TAG = "cxrdet.pid"  # with the host: lets a later stage run close a run whose process died


def git_commit(root: Path) -> tuple[str, bool]:
    """(commit, dirty) of the working tree; ("unknown", False) outside a git repository."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(status.strip())


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params -> {"a.b.c": value}, the form MLflow compares across runs."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


@contextmanager
def stage_run(
    stage: str,
    *,
    root: Path,
    experiment: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
) -> Iterator[Any]:
    """Start the MLflow run of one pipeline stage with identity tags and its params."""
    import mlflow

    configure(root, tracking_uri)
    experiment_id = ensure_experiment(experiment, root)
    close_orphaned_runs(experiment_id)
    commit, dirty = git_commit(root)
    run_tags = {
        "cxrdet.stage": stage,
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        GIT_COMMIT_TAG: commit,
        "cxrdet.git_dirty": str(dirty).lower(),
        **({"cxrdet.dvc_exp": os.environ["DVC_EXP_NAME"]} if "DVC_EXP_NAME" in os.environ else {}),
        **(tags or {}),
    }
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name or stage, tags=run_tags)
    with _terminated_on_sigterm(), _nested_runs_in(experiment_id):
        try:
            if params:
                mlflow.log_params({k: str(v) for k, v in flatten(params).items()})
            yield run
        except Terminated as stop:
            # A killed stage's run must not stay RUNNING in the UI: close it as KILLED.
            _end_runs(run, "KILLED")
            raise SystemExit(128 + stop.signum) from None
        except BaseException:
            _end_runs(run, "FAILED")
            raise
        _end_runs(run, "FINISHED")


def close_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by a stage process of this host that is gone (SIGKILL,
    out of memory, power loss), and their nested runs: such a process could not close them.
    Returns their ids."""
    import mlflow

    running = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string="attributes.status = 'RUNNING'",
        output_format="list",
    )
    host = socket.gethostname()
    dead = {
        run.info.run_id: pid
        for run in running
        if run.data.tags.get(HOST_TAG) == host
        and (pid := run.data.tags.get(PID_TAG, "")).isdigit()
        and not _alive(int(pid))
    }
    client = mlflow.MlflowClient()
    closed = []
    for run in running:
        stage_run_id = (
            run.info.run_id if run.info.run_id in dead else run.data.tags.get("mlflow.parentRunId")
        )
        if stage_run_id in dead:
            reason = f"process {dead[stage_run_id]} ended without closing its run"
            client.set_tag(run.info.run_id, "cxrdet.end_reason", reason)
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


@contextmanager
def _nested_runs_in(experiment_id: str) -> Iterator[None]:
    """A nested run goes to the active experiment, not its parent's: make it the stage's
    (through MLflow's environment variable, so nothing stays set after the stage)."""
    previous = os.environ.get(EXPERIMENT_ENV)
    os.environ[EXPERIMENT_ENV] = experiment_id
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(EXPERIMENT_ENV, None)
        else:
            os.environ[EXPERIMENT_ENV] = previous


class Terminated(BaseException):
    """SIGTERM arrived (dvc queue kill, a scheduler, Ctrl-C of a parent): unwinds the stage
    like KeyboardInterrupt, so its MLflow run and partial files are closed properly."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextmanager
def _terminated_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end_runs(run: Any, status: str) -> None:
    """End the stage's run and any nested run still open inside it (e.g. an Optuna trial)."""
    import mlflow

    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        if active.info.run_id == run.info.run_id:
            break


def log_numeric(
    values: Mapping[str, Any], prefix: str = "", step: int | None = None, run_id: str | None = None
) -> None:
    """Log every numeric leaf of a nested mapping as a metric named by its dotted path, in the
    project's naming scheme (cxrdet.tracking.names): every metric goes through here. To the
    active run, or to `run_id`."""
    import mlflow

    numeric = {
        metric_key(f"{prefix}{key}"): float(value)
        for key, value in flatten(values).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    if numeric:
        mlflow.log_metrics(numeric, step=step, run_id=run_id)


def log_history(history: Sequence[Mapping[str, float]], model: str, run_id: str) -> None:
    """A model's per-epoch metrics (step = epoch), logged on its nested run while it trained,
    again on the stage's run `run_id` under the model's name (`retinanet.val.rsna`): the
    stage's chart view shows every model's curves without opening nested runs."""
    for epoch, values in enumerate(history, start=1):
        log_numeric(values, prefix=f"{model}.", step=epoch, run_id=run_id)


RUN_NAME_CHARS = 20  # what the runs table shows of a name before cutting it


def nested_run_name(model: str, suffix: str) -> str:
    """`<model> <suffix>` ("demo_opacity f0", "retinanet final") in RUN_NAME_CHARS characters.
    A nested run sits under its stage's run, so it does not repeat the stage's name; a long
    model name loses its middle, keeping its start and its end, where variant names tend to
    differ (`inception_resnet_v2_256` / `_320`)."""
    room = RUN_NAME_CHARS - len(suffix) - 1
    if len(model) > room:
        head = (room - 1) // 2
        model = f"{model[:head]}~{model[len(model) - (room - 1 - head) :]}"
    return f"{model} {suffix}"
