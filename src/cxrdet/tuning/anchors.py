"""Anchor search: Optuna over base size, scales and ratios, each trial a short proxy training.

Trial 0 trains params' detector.anchors (the yardstick: never pruned). A later trial's anchors
are first checked against the training boxes: below `min_bpr` best possible recall they are
pruned before any training. Otherwise the detector trains for a few epochs on a subset of one
fold's training images, validates on a patient sample of the fold, and reports its validation
score (detector.monitor, the RSNA score by default) every epoch to the pruner. The trials that
run are bounded by `budget_fraction` of one fold's training (`trial_budget`). The best tuned
anchors replace the configured ones only when they score `min_gain` more; the winner is written
as `AnchorConfig.to_dict()` under "anchors" in the stage's JSON output, which `train_detector`
reads, next to both scores.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.families import retinanet
from cxrdet.models.anchors import (
    AnchorConfig,
    anchors_from_base,
    best_possible_recall,
    resolve_anchors,
)
from cxrdet.models.backbone import backbone_source
from cxrdet.models.retinanet import create_detector_backbone, pyramid_levels
from cxrdet.runtime.session import Runtime
from cxrdet.tracking.runs import log_numeric
from cxrdet.train.detector import (
    DetectorData,
    seeded_family,
    train_detector,
    training_box_sizes,
    weights_identity,
)
from cxrdet.tuning.study import (
    finished_trials,
    log_best_trial,
    make_pruner,
    open_study,
    report_epoch,
    run_trials,
    study_name,
)

SLACK = 1e-3  # relative tolerance when matching params' anchors to the search space
COMPLETE, PRUNED, FAIL = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
Trial = optuna.trial.FrozenTrial


def suggest_anchors(
    trial: optuna.Trial, search: AnchorSearchParams, strides: Sequence[int]
) -> tuple[AnchorConfig, float]:
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
    if not all(
        r.low * (1 - SLACK) <= point[name] <= r.high * (1 + SLACK) for name, r in ranges.items()
    ):
        return None
    return {name: min(max(point[name], r.low), r.high) for name, r in ranges.items()}


def proxy_ids(train_ids: Sequence[str], subset: int, seed: int) -> list[str]:
    """A fixed random subset of the training images (all of them when subset is 0)."""
    if not subset or subset >= len(train_ids):
        return list(train_ids)
    chosen = np.random.default_rng(seed).choice(len(train_ids), size=subset, replace=False)
    return [train_ids[i] for i in sorted(chosen)]


def val_sample(
    val_ids: Sequence[str], patients: Mapping[str, str], count: int, seed: int
) -> list[str]:
    """A fixed random set of whole patients of `val_ids`, drawn until it holds `count` images
    (all of them when count is 0): a patient's images are never split between in and out."""
    if not count or count >= len(val_ids):
        return list(val_ids)
    order = np.random.default_rng(seed).permutation(sorted({patients[i] for i in val_ids}))
    images = Counter(patients[i] for i in val_ids)
    chosen: set[str] = set()
    taken = 0
    for patient in order:
        if taken >= count:
            break
        chosen.add(str(patient))
        taken += images[patient]
    return [i for i in val_ids if patients[i] in chosen]


@dataclass(frozen=True)
class Budget:
    """The search's cost in image passes (one image through the network once, a training step or
    a validation forward counted alike: conservative for the trials, whose validation share is
    the larger), against one fold's training."""

    fold_passes: int  # detector.optim.epochs x (a fold's training + validation images)
    trial_passes: int  # tune_anchors.epochs x (subset + val_subset images)
    trials: int  # trials run: tune_anchors.trials, cut to what the budget holds
    fraction: float  # trials x trial_passes / fold_passes: the worst case, without pruning


def trial_budget(
    tune: TuneAnchorsParams, detector_epochs: int, fold_images: int, trial_images: int
) -> Budget:
    """How many of tune.trials fit tune.budget_fraction of one fold's training."""
    fold, trial = detector_epochs * fold_images, tune.epochs * trial_images
    trials = tune.trials
    if tune.budget_fraction is not None:
        fits = int(tune.budget_fraction * fold // trial)
        if fits < min(trials, 2):  # the configured anchors and at least one tuned set
            raise ConfigError(
                f"tune_anchors.budget_fraction: {tune.budget_fraction} of one fold's training "
                f"({fold} image passes) holds {fits} proxy trial(s) of {trial} (epochs "
                f"{tune.epochs} x {trial_images} images), 2 are needed: lower tune_anchors.epochs, "
                "subset or val_subset, or raise budget_fraction"
            )
        trials = min(trials, fits)
    return Budget(fold, trial, trials, round(trials * trial / fold, 4))


@dataclass(frozen=True)
class AnchorTuneResult:
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
) -> AnchorTuneResult:
    """Run the study (resuming it when it exists) and return its best anchors."""
    weights = backbone_source(detector, pretrained_dir, allow_download)
    _, strides = pyramid_levels(
        create_detector_backbone(detector.backbone).feature_info, detector.p2
    )
    ids = proxy_ids(train_ids, tune.subset, tune.study.seed)
    images = prepared.images
    patients = dict(zip(images["image_id"], images["patient_id"].astype(str), strict=True))
    val = val_sample(val_ids, patients, tune.val_subset, tune.study.seed)
    fold_images = len(train_ids) + len(val_ids)
    budget = trial_budget(tune, detector.optim.epochs, fold_images, len(ids) + len(val))
    box_wh = training_box_sizes(prepared, ids, detector.image_size)
    proxy = detector.model_copy(
        update={"optim": detector.optim.model_copy(update={"epochs": tune.epochs})}
    )
    identity = {
        "data_hash": prepared.info["data_hash"],
        "fold": tune.fold,
        "ids": ids,
        "val_ids": val,
        "epochs": tune.epochs,
        "search": tune.search.model_dump(),
        "min_bpr": tune.min_bpr,
        "weights": weights_identity(weights),
        "detector": detector.model_dump(exclude={"decode", "tta", "folds", "name"}),
    }
    name = study_name("anchors", identity)
    study = open_study(name, tune.study, journal, make_pruner(tune.pruner, tune.epochs))
    mlflow.set_tag("optuna.study", name)
    # The configured anchors are always the first trial, trained like the others, so the stage can
    # say what the search gained over them. Inside the search space they are enqueued as its point
    # (TPE learns from them); outside it, as a trial without params.
    point = configured_trial(detector.anchors, tune.search)
    attrs = {"configured": True, "in_space": point is not None}
    if not study.trials:
        study.enqueue_trial(point or {}, user_attrs=attrs)

    def objective(trial: optuna.Trial) -> float:
        is_configured = bool(trial.user_attrs.get("configured"))
        if is_configured:
            if trial.user_attrs.get("in_space"):
                suggest_anchors(trial, tune.search, strides)  # records the enqueued point for TPE
            # exactly as params, not the rounded search-space point
            anchors = resolve_anchors(detector.anchors, strides, None, "detector.anchors")
        else:
            anchors, _ = suggest_anchors(trial, tune.search, strides)
        bpr = best_possible_recall(box_wh, anchors.shapes())
        trial.set_user_attr("anchors", anchors.to_dict())
        trial.set_user_attr("bpr", bpr)
        log_numeric({"bpr": bpr, "anchors_per_location": anchors.per_location})
        mlflow.set_tag("cxrdet.anchors", "configured" if is_configured else "tuned")
        # The configured anchors are never pruned: their score is the yardstick.
        if bpr < tune.min_bpr and not is_configured:
            raise optuna.TrialPruned(
                f"best possible recall {bpr:.3f} < tune_anchors.min_bpr {tune.min_bpr}"
            )

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            score = _finite(metrics[f"val_{detector.monitor}"])
            report_epoch(trial, score, epoch, prune=not is_configured)

        model = seeded_family(
            proxy,
            data,
            retinanet.KEY,
            tuned_anchors={"anchors": anchors.to_dict()},
            tuned_key=f"trial {trial.number}",
            weights=weights,
        )
        with tempfile.TemporaryDirectory(prefix="cxrdet-anchor-trial-") as checkpoints:
            result = train_detector(
                model,
                proxy,
                data,
                prepared,
                ids,
                val,
                runtime,
                Path(checkpoints),
                identity={"trial": trial.number, "study": name},
                log=lambda values, step: log_numeric(values, step=step),
                on_epoch_end=on_epoch_end,
                desc=f"anchor trial {trial.number}",
            )
        value = _finite(result.best_score)
        log_numeric({f"best_val_{detector.monitor}": value})
        return value

    tags = {"cxrdet.stage": "tune_anchors", "optuna.study": name}
    run_trials(study, objective, budget.trials, tags=tags, label="anchor-trial")
    if choose(study.get_trials(deepcopy=False), tune.min_gain) is None:
        # A run killed in trial 0 leaves it RUNNING for good (a journal has no heartbeat): train
        # the configured anchors again, one trial past the budget, so there is a score to beat.
        study.enqueue_trial(point or {}, user_attrs=attrs)
        run_trials(study, objective, finished_trials(study) + 1, tags=tags, label="anchor-trial")
    trials = study.get_trials(deepcopy=False)
    counts = {
        state.name.lower(): sum(t.state == state for t in trials)
        for state in (COMPLETE, PRUNED, FAIL)
    }
    choice = choose(trials, tune.min_gain)
    if choice is None:
        raise CxrdetError(
            f"study {name}: the configured anchors' trial did not complete ({counts}); "
            "see its MLflow run"
        )
    baseline, best, chosen = choice
    log_best_trial(chosen)
    key = f"study {name}, trial {chosen.number}"
    anchors = AnchorConfig.from_dict(chosen.user_attrs["anchors"], key=key)
    metric = detector.monitor
    summary = {
        "source": "tune_anchors",
        "study": name,
        "trial": chosen.number,
        "configured": chosen is baseline,
        metric: chosen.value,
        f"configured_{metric}": baseline.value,  # params' detector.anchors, same proxy training
        f"best_{metric}": best.value if best else None,  # the best tuned trial, kept or not
        "best_trial": best.number if best else None,
        "min_gain": tune.min_gain,
        "bpr": chosen.user_attrs["bpr"],
        "params": chosen.params,
        "trials": counts,
        "train_images": len(ids),
        "val_images": len(val),
        "budget": asdict(budget),
    }
    return AnchorTuneResult(anchors, summary)


def choose(trials: Sequence[Trial], min_gain: float) -> tuple[Trial, Trial | None, Trial] | None:
    """(configured, best tuned or None, chosen) among the completed trials; None while the
    configured anchors' trial has not completed. Tuned anchors are chosen only when they beat
    the configured ones by `min_gain`: short proxy trainings are noisy."""
    completed = [t for t in trials if t.state == COMPLETE]
    baseline = next((t for t in completed if t.user_attrs.get("configured")), None)
    if baseline is None:
        return None
    tuned = [t for t in completed if not t.user_attrs.get("configured")]
    best = max(tuned, key=lambda t: (t.value, -t.number), default=None)
    wins = best is not None and best.value >= baseline.value + min_gain
    return baseline, best, best if wins else baseline


def _finite(value: float) -> float:
    """Optuna needs numbers: a score undefined for lack of predictions counts as 0."""
    return float(value) if math.isfinite(value) else 0.0
