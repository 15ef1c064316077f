"""The MLflow set-up the training stages share (train_classifier, train_detector,
train_detector_final): under DDP only the main process tracks, so every helper here hands
the other ranks a no-op; the stage's run logs the detect dataset; each model trains inside
its own nested run; each fold detector family is logged as a LoggedModel with its card."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from cxrdet.config import Params
from cxrdet.data.datasets import Prepared
from cxrdet.errors import CxrdetError
from cxrdet.paths import ANCHORS, PREPARED_DETECT
from cxrdet.tracking.inputs import log_dataset
from cxrdet.tracking.logged_models import log_model_files, model_card
from cxrdet.tracking.runs import log_numeric, nested_run_name, stage_run

StepLogger = Callable[[Mapping[str, float], int], None]


def detect_tags(prepared: Prepared, fold: str, model: str | None = None) -> dict[str, str]:
    """The tags every run of a training stage carries: the dataset, its hash, the fold and,
    for the detector stages, the model."""
    return {
        "cxrdet.dataset": "detect",
        "cxrdet.data_hash": prepared.info["data_hash"],
        "cxrdet.fold": fold,
        **({"cxrdet.model": model} if model else {}),
    }


def main_stage_run(
    main_process: bool,
    stage: str,
    root: Path,
    params: Params,
    tags: dict[str, str],
    run_params: dict[str, Any],
    run_name: str | None = None,
) -> AbstractContextManager:
    """The stage's MLflow run on the main process (a no-op elsewhere)."""
    if not main_process:
        return nullcontext()
    return stage_run(
        stage,
        root=root,
        experiment=params.tracking.experiment,
        run_name=run_name,
        tags=tags,
        params=run_params,
        tracking_uri=params.tracking.tracking_uri,
    )


def log_detect_dataset(main_process: bool, prepared: Prepared, root: Path) -> None:
    """The prepared detect table as the stage run's input dataset (main process only)."""
    if main_process:
        log_dataset(
            prepared.images,
            name="detect",
            data_hash=prepared.info["data_hash"],
            source=root / PREPARED_DETECT,
        )


def model_run(
    main_process: bool, stage: str, model: str, suffix: str, tags: dict[str, str]
) -> AbstractContextManager:
    """The nested run one model trains in (e.g. `retinanet-f0`); a no-op off the main process."""
    if not main_process:
        return nullcontext()
    import mlflow

    return mlflow.start_run(
        run_name=nested_run_name(model, suffix),
        nested=True,
        tags={**tags, "cxrdet.stage": stage, "cxrdet.model": model},
    )


def step_logger(main_process: bool) -> StepLogger | None:
    """The training loop's per-epoch metric logger (None off the main process)."""
    if not main_process:
        return None
    return lambda values, step: log_numeric(values, step=step)


def read_tuned_anchors(root: Path) -> dict[str, Any]:
    """tune_anchors' output, which every detector training stage builds its anchors from."""
    path = root / ANCHORS
    if not path.is_file():
        raise CxrdetError(f"{path}: not found; run `dvc repro tune_anchors` first")
    return json.loads(path.read_text())


def log_family_model(
    name: str,
    family: str,
    model_file: Path,
    title: str,
    card: dict[str, Any],
    params: dict[str, Any],
    tags: dict[str, str],
    run_id: str,
) -> None:
    """One trained detector family's weights as a LoggedModel `name` with its model card."""
    log_model_files(
        name,
        [model_file],
        model_card(
            title,
            card,
            f"`cxrdet.families.get_family({family!r}).load(path)`; the ensemble that serves "
            "is the registered model (`cxrdet registry list`).",
        ),
        model_type="cxrdet.detector",
        params=params,
        tags=tags,
        run_id=run_id,
    )
