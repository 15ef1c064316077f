"""Anchor search: Optuna over base size, scales and ratios, each trial a short proxy training.

A trial's anchors are first checked against the training boxes: below `min_bpr` best
possible recall they are pruned before any training. Otherwise the detector trains for
a few epochs on (a subset of) one fold and reports its validation score (detector.monitor,
the RSNA score by default) every epoch to the pruner. The study's best anchors are written as `AnchorConfig.to_dict()` under
"anchors" in the stage's JSON output, which `train_detector` reads.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
from optuna.trial import TrialState

from cxrdet.config import (
    AnchorParams,
    AnchorSearchParams,
    DetectorParams,
    TuneAnchorsParams,
)
from cxrdet.data.datasets import Prepared
from cxrdet.errors import CxrdetError
from cxrdet.models.anchors import AnchorConfig, anchors_from_base, best_possible_recall
from cxrdet.models.retinanet import create_detector_backbone, pyramid_levels
from cxrdet.tracking.runs import log_numeric
from cxrdet.train.detector import (
    DetectorData,
    backbone_source,
    seeded_detector,
    train_detector,
    training_box_sizes,
    weights_identity,
)
from cxrdet.train.runtime import Runtime
from cxrdet.tuning.study import make_pruner, open_study, report_epoch, run_trials, study_name

SLACK = 1e-3  # relative tolerance when matching params' anchors to the search space
COMPLETE, PRUNED, FAIL = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def suggest_anchors(trial: optuna.Trial, search: AnchorSearchParams, strides: Sequence[int]) -> tuple[AnchorConfig, float]:
    """(anchors, base size): scales span^(k / n) for k < n; ratios span^t, t evenly in [-1, 1]."""
    base = trial.suggest_float("base_size", search.base_size.low, search.base_size.high, log=True)
    scale_count = trial.suggest_int("scale_count", search.scale_count.low, search.scale_count.high)
    scale_span = trial.suggest_float("scale_span", search.scale_span.low, search.scale_span.high)
    ratio_count = trial.suggest_int("ratio_count", search.ratio_count.low, search.ratio_count.high)
    ratio_span = trial.suggest_float("ratio_span", search.ratio_span.low, search.ratio_span.high)
    scales = [round(scale_span ** (k / scale_count), 4) for k in range(scale_count)]
    exponents = np.linspace(-1.0, 1.0, ratio_count) if ratio_count > 1 else np.zeros(1)
    ratios = [round(float(ratio_span**t), 4) for t in exponents]
    return anchors_from_base(base, strides, scales, ratios), base


def configured_trial(anchors: AnchorParams, search: AnchorSearchParams) -> dict[str, float] | None:
    """The search-space point of params' detector.anchors, when the space holds them: the
    study's first trial, so tuned anchors must beat the configured ones."""
    if anchors.sizes is not None:
        return None
    scales, ratios = anchors.scales, anchors.ratios
    point = {
        "base_size": anchors.base_size,
        "scale_count": len(scales),
        "scale_span": scales[-1] ** (len(scales) / (len(scales) - 1)) if len(scales) > 1 else 1.0,
        "ratio_count": len(ratios),
        "ratio_span": ratios[-1] if len(ratios) > 1 else 1.0,
    }
    ranges = {name: getattr(search, name) for name in point}
    # Rounded params (1.587 for 2^(2/3)) may land a hair outside a range that holds them.
    if not all(r.low * (1 - SLACK) <= point[name] <= r.high * (1 + SLACK) for name, r in ranges.items()):
        return None
    return {name: min(max(point[name], r.low), r.high) for name, r in ranges.items()}


def proxy_ids(train_ids: Sequence[str], subset: int, seed: int) -> list[str]:
    """A fixed random subset of the training images (all of them when subset is 0)."""
    if not subset or subset >= len(train_ids):
        return list(train_ids)
    chosen = np.random.default_rng(seed).choice(len(train_ids), size=subset, replace=False)
    return [train_ids[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class TuneResult:
    anchors: AnchorConfig
    summary: dict[str, Any]  # what the stage writes next to the anchors


def tune_anchors(
    detector: DetectorParams,
    tune: TuneAnchorsParams,
    data: DetectorData,
    prepared: Prepared,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    runtime: Runtime,
    journal: Path,
    pretrained_dir: Path,
    allow_download: bool,
) -> TuneResult:
    """Run the study (resuming it when it exists) and return its best anchors."""
    weights = backbone_source(detector, pretrained_dir, allow_download)
    _, strides = pyramid_levels(create_detector_backbone(detector.backbone).feature_info, detector.p2)
    ids = proxy_ids(train_ids, tune.subset, tune.study.seed)
    box_wh = training_box_sizes(prepared, ids, detector.image_size)
    proxy = detector.model_copy(update={"optim": detector.optim.model_copy(update={"epochs": tune.epochs})})
    identity = {
        "data_hash": prepared.info["data_hash"], "fold": tune.fold, "ids": ids, "epochs": tune.epochs,
        "search": tune.search.model_dump(), "min_bpr": tune.min_bpr, "weights": weights_identity(weights),
        "detector": detector.model_dump(exclude={"decode", "tta", "folds", "name"}),
    }
    name = study_name("anchors", identity)
    study = open_study(name, tune.study, journal, make_pruner(tune.pruner, tune.epochs))
    mlflow.set_tag("optuna.study", name)
    configured = configured_trial(detector.anchors, tune.search)
    if configured is not None and not study.trials:
        study.enqueue_trial(configured, user_attrs={"configured": True})

    def objective(trial: optuna.Trial) -> float:
        anchors, _ = suggest_anchors(trial, tune.search, strides)
        bpr = best_possible_recall(box_wh, anchors.shapes())
        trial.set_user_attr("anchors", anchors.to_dict())
        trial.set_user_attr("bpr", bpr)
        mlflow.log_metrics({"bpr": bpr, "anchors_per_location": anchors.per_location})
        if bpr < tune.min_bpr:
            raise optuna.TrialPruned(f"best possible recall {bpr:.3f} < tune_anchors.min_bpr {tune.min_bpr}")
        model = seeded_detector(proxy, data, tuned_anchors={"anchors": anchors.to_dict()}, tuned_key=f"trial {trial.number}", weights=weights)
        with tempfile.TemporaryDirectory(prefix="cxrdet-anchor-trial-") as checkpoints:
            result = train_detector(
                model, proxy, data, prepared, ids, val_ids, runtime, Path(checkpoints),
                identity={"trial": trial.number, "study": name},
                log=lambda values, step: log_numeric(values, step=step),
                on_epoch_end=lambda epoch, metrics: report_epoch(trial, _finite(metrics[f"val_{detector.monitor}"]), epoch),
                desc=f"anchor trial {trial.number}",
            )
        return _finite(result.best_score)

    run_trials(study, objective, tune.trials, tags={"cxrdet.stage": "tune_anchors", "optuna.study": name})
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in (COMPLETE, PRUNED, FAIL)}
    completed = [t for t in trials if t.state == COMPLETE]
    if not completed:
        raise CxrdetError(
            f"study {name}: no trial completed ({counts}); lower tune_anchors.min_bpr or widen tune_anchors.search"
        )
    best = max(completed, key=lambda t: (t.value, -t.number))
    baseline = next((t for t in completed if t.user_attrs.get("configured")), None)
    if baseline is not None and best.value < baseline.value + tune.min_gain:
        best = baseline  # no trial beat the configured anchors by tune_anchors.min_gain
    anchors = AnchorConfig.from_dict(best.user_attrs["anchors"], key=f"study {name}, trial {best.number}")
    summary = {
        "source": "tune_anchors", "study": name, "trial": best.number, "configured": best is baseline,
        detector.monitor: best.value, "bpr": best.user_attrs["bpr"], "params": best.params, "trials": counts,
    }
    return TuneResult(anchors, summary)


def _finite(value: float) -> float:
    """Optuna needs numbers: a score undefined for lack of predictions counts as 0."""
    return float(value) if math.isfinite(value) else 0.0
