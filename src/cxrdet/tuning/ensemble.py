"""Ensemble search: Optuna (seeded TPE) over the ensemble recipe, scored on the cached
out-of-fold predictions by the dataset's competition metric, or the metric params'
`tune_ensemble.objective` names (map: mAP@0.4; rsna: the RSNA score).

No network runs inside a trial: the detector and classifier stages stored every TTA
view's predictions, and a trial only chooses views, fuses, shrinks, gates and cuts
(cxrdet.ensemble.apply_recipe). Out of fold each image was predicted by one fold
model, so the fold fusion is not tuned here; it comes from params (`ensemble.fold_fusion`).

The untuned recipe (params' `ensemble`) is scored first and enqueued as trial 0 where
the search space holds it; the study's best recipe replaces it only when it scores at
least as well. A trial whose recipe leaves no box, or whose inputs it cannot use, fails
with its reason recorded and the study goes on.

Under plain VOC mAP (objective map on any format but VinBigData) the score thresholds
(`score_threshold`, the gates' `threshold`) are not searched but kept at their range's low
end: each is a cut on the final box score, and the boxes a lower cut adds rank below every
box kept, so they only extend each class's precision-recall curve and cannot lower its
(all-point) AP; a searched cut would only spend trials. `max_boxes` stays searched: a
per-image cap drops boxes that can outrank other images' kept ones, so it is no such cut.
The RSNA score counts every extra box as a false positive, so there both are searched (and
VinBigData's class-14 rule puts the no-finding box on images the cut empties, so there too).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
from optuna.trial import TrialState

from cxrdet.config import (
    CountRange,
    EnsembleSearchParams,
    ShrinkRange,
    TuneEnsembleParams,
    UnitRange,
)
from cxrdet.ensemble import (
    EnsembleRecipe,
    Fusion,
    Gating,
    MemberPredictions,
    apply_recipe,
    view_order,
)
from cxrdet.ensemble.gating import NOT_NORMAL_COLUMN
from cxrdet.errors import CxrdetError
from cxrdet.formats import competition_score, metric_name, resolve_objective
from cxrdet.paths import CLASSIFIER_FOLDS, DETECTOR_FOLDS
from cxrdet.tracking.runs import log_numeric
from cxrdet.tuning.study import (
    log_best_trial,
    open_study,
    run_trials,
    study_name,
    trial_reason,
)

COMPLETE, PRUNED, FAIL = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
Spec = UnitRange | ShrinkRange | CountRange | Sequence[str]

# Which search-space entry each method's parameter is drawn from (the rest keep their defaults).
FUSION_SEARCH: dict[str, dict[str, str]] = {
    "vote": {"iou_thr": "iou_thr"},
    "wbf": {"iou_thr": "iou_thr", "conf_type": "conf_types"},
    "nms": {"iou_thr": "iou_thr"},
    "soft_nms": {"sigma": "sigma"},
    "soft_nms_linear": {"iou_thr": "iou_thr"},
}
GATING_SEARCH: dict[str, dict[str, str]] = {
    "none": {},
    "product": {"threshold": "gate_threshold"},
    "sqrt": {"not_normal_weight": "not_normal_weight", "threshold": "gate_threshold"},
    "no_finding": {"low": "no_finding_low", "high": "no_finding_high"},
}


class TrialFailed(CxrdetError):
    """A recipe left nothing to score."""


@dataclass(frozen=True)
class TuningData:
    predictions: MemberPredictions  # out-of-fold, every TTA view
    truth: pd.DataFrame  # boxes of the scored images, original pixels
    image_ids: list[str]  # the scored images
    fmt: str  # the prepared dataset's format: picks the metric
    class_names: dict[str, list[str]]  # classifier model -> the classes of its probs (p_ columns)


def read_fold_predictions(
    root: Path,
    detector_folds: Sequence[int],
    classifier_folds: Sequence[int],
    part: str,
    sizes: pd.DataFrame,
) -> MemberPredictions:
    """The stored predictions of every fold model on `part` ("oof" or "holdout")."""

    def read(path: Path, stage: str) -> pd.DataFrame:
        if not path.is_file():
            raise CxrdetError(f"{path}: not found; run `dvc repro {stage}` first")
        return pd.read_parquet(path)

    def every_fold(folder: str, name: str, folds: Sequence[int], stage: str) -> pd.DataFrame:
        tables = [read(root / folder / f"fold{k}" / name, f"{stage}@{k}") for k in folds]
        return pd.concat(tables, ignore_index=True)

    return MemberPredictions(
        boxes=every_fold(DETECTOR_FOLDS, f"{part}_boxes.parquet", detector_folds, "train_detector"),
        images=every_fold(
            DETECTOR_FOLDS, f"{part}_images.parquet", detector_folds, "train_detector"
        ),
        classifier=every_fold(
            CLASSIFIER_FOLDS, f"{part}.parquet", classifier_folds, "train_classifier"
        ),
        sizes=sizes[["image_id", "width", "height"]],
    )


def score_recipe(data: TuningData, recipe: EnsembleRecipe, objective: str = "auto") -> float:
    """The metric of `objective` (tune_ensemble.objective; auto: the format's competition
    metric) of `recipe` on the data; TrialFailed when it has no value."""
    final = apply_recipe(data.predictions, recipe, data.class_names).boxes
    if final.empty:
        raise TrialFailed(
            f"no box left on {len(data.image_ids)} images (score_threshold "
            f"{recipe.score_threshold:g}, "
            f"gating {recipe.gating.rule})"
        )
    value = competition_score(data.fmt, data.truth, final, data.image_ids, objective)
    if not math.isfinite(value):
        raise TrialFailed(f"{metric_name(data.fmt, objective)} is undefined on these images")
    return value


# ---------------------------------------------------------------- the search space


def _suggest(trial: optuna.Trial, name: str, spec: Spec) -> Any:
    if isinstance(spec, CountRange):
        return trial.suggest_int(name, spec.low, spec.high)
    if isinstance(spec, (UnitRange, ShrinkRange)):
        return trial.suggest_float(name, spec.low, spec.high)
    return trial.suggest_categorical(name, list(spec))


def _clipped(value: Any, spec: Spec) -> Any:
    """`value` moved into the range of `spec` (None when a choice is not offered)."""
    if isinstance(spec, (CountRange, UnitRange, ShrinkRange)):
        return min(max(value, spec.low), spec.high)
    return value if value in spec else None


@dataclass(frozen=True)
class SearchSpace:
    search: EnsembleSearchParams
    views: list[str]  # the detector's TTA views, the original first
    classifier_views: int  # how many classifier TTA views there are
    rules: list[str]  # the gating rules the data can feed
    fixed: Mapping[str, Any] = field(
        default_factory=dict
    )  # search entries not searched -> their value

    def _value(self, trial: optuna.Trial, name: str, entry: str) -> Any:
        if entry in self.fixed:
            return self.fixed[entry]
        return _suggest(trial, name, getattr(self.search, entry))

    def suggest(self, trial: optuna.Trial, base: EnsembleRecipe) -> EnsembleRecipe:
        search, changes = self.search, {}
        if search.detector_views and len(self.views) > 1:
            # The original view always stays: a trial without views would have nothing to fuse.
            chosen = [
                v for v in self.views[1:] if trial.suggest_categorical(f"view.{v}", [True, False])
            ]
            changes["detector_views"] = (self.views[0], *chosen)
        if search.classifier_views and self.classifier_views > 1:
            changes["classifier_views"] = trial.suggest_int(
                "classifier_views", 1, self.classifier_views
            )
        method = trial.suggest_categorical("view_fusion", list(search.view_fusion))
        changes["view_fusion"] = Fusion(
            method,
            {
                name: self._value(trial, f"view_fusion.{method}.{name}", entry)
                for name, entry in FUSION_SEARCH[method].items()
            },
        )
        rule = trial.suggest_categorical("gating", self.rules)
        changes["gating"] = Gating(
            rule,
            {
                name: self._value(trial, f"gating.{rule}.{name}", entry)
                for name, entry in GATING_SEARCH[rule].items()
            },
        )
        for name in ("shrink", "score_threshold", "max_boxes"):
            changes[name] = self._value(trial, name, name)
        return base.with_changes(**changes)

    def point(self, recipe: EnsembleRecipe) -> dict[str, Any]:
        """The trial params of `recipe`, as far as the space holds it (values clipped into
        their ranges; what it does not hold is sampled)."""
        search, point = self.search, {}
        if search.detector_views and len(self.views) > 1:
            chosen = recipe.detector_views or self.views
            point |= {f"view.{v}": v in chosen for v in self.views[1:]}
        if search.classifier_views and self.classifier_views > 1:
            point["classifier_views"] = min(
                recipe.classifier_views or self.classifier_views, self.classifier_views
            )
        fusion, gating = recipe.view_fusion, recipe.gating
        for key, chosen, offered, table, params in (
            ("view_fusion", fusion.method, search.view_fusion, FUSION_SEARCH, fusion.params),
            ("gating", gating.rule, self.rules, GATING_SEARCH, gating.params),
        ):
            if chosen in offered:
                point[key] = chosen
                for name, entry in table[chosen].items():
                    if entry in self.fixed:
                        continue
                    if (
                        name in params
                        and _clipped(params[name], getattr(search, entry)) is not None
                    ):
                        point[f"{key}.{chosen}.{name}"] = _clipped(
                            params[name], getattr(search, entry)
                        )
        for name in ("shrink", "score_threshold", "max_boxes"):
            if name not in self.fixed:
                point[name] = _clipped(getattr(recipe, name), getattr(search, name))
        return point


def unsearched(fmt: str, objective: str, search: EnsembleSearchParams) -> dict[str, Any]:
    """The search entries an objective leaves fixed, with their value: under plain VOC mAP the
    score cuts at their range's low end (a lower cut only appends boxes ranked below every
    kept one, which cannot lower AP; see the module's docstring), else none."""
    if resolve_objective(fmt, objective) != "map" or fmt == "vinbigdata":
        return {}
    return {
        "score_threshold": search.score_threshold.low,
        "gate_threshold": search.gate_threshold.low,
    }


def usable_rules(data: TuningData, offered: Sequence[str]) -> list[str]:
    """The offered gating rules the classifiers can feed: sqrt needs P(not normal), which only a
    classifier of the RSNA image labels gives."""
    has_not_normal = any(
        f"p_{name}" == NOT_NORMAL_COLUMN for names in data.class_names.values() for name in names
    )
    rules = [rule for rule in offered if rule != "sqrt" or has_not_normal]
    if data.predictions.classifier.empty:
        rules = [rule for rule in rules if rule == "none"]
    if not rules:
        raise CxrdetError(
            f"tune_ensemble.search.gating: none of {list(offered)} can be used (sqrt needs a "
            "classifier variant with target: label on RSNA data; every rule but none needs "
            "classifier predictions)"
        )
    return rules


def fingerprint(data: TuningData) -> str:
    """A digest of the predictions and truth: a study only resumes on the same inputs."""
    digest = hashlib.sha256(data.fmt.encode())
    tables = (
        data.predictions.boxes,
        data.predictions.images.iloc[:, :4],
        data.predictions.classifier[["image_id", "fold", "model", "view", "opacity"]],
        data.truth,
    )
    for table in tables:
        digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- the study


@dataclass(frozen=True)
class EnsembleTuneResult:
    recipe: EnsembleRecipe
    summary: dict[str, Any]  # what the stage writes next to the recipe
    study: optuna.Study


def tune_ensemble(
    data: TuningData, base: EnsembleRecipe, tune: TuneEnsembleParams, journal: Path
) -> EnsembleTuneResult:
    """Run the study (resuming it when it exists) and return the best recipe, scored by
    `tune.objective` (its resolved name is the summary's "objective")."""
    objective = resolve_objective(data.fmt, tune.objective)
    metric = metric_name(data.fmt, objective)
    try:
        untuned, untuned_error = score_recipe(data, base, objective), None
    except CxrdetError as error:  # e.g. params' thresholds drop every box: any trial beats it
        untuned, untuned_error = None, str(error)
    space = SearchSpace(
        tune.search,
        view_order(data.predictions.images),
        len(view_order(data.predictions.classifier)) if len(data.predictions.classifier) else 0,
        usable_rules(data, tune.search.gating),
        unsearched(data.fmt, objective, tune.search),
    )
    # The fold fusion is no knob of the study (one fold model per image): changing it keeps the
    # study.
    identity = {
        "inputs": fingerprint(data),
        "search": tune.search.model_dump(),
        "rules": space.rules,
        "objective": objective,
        "base": {k: v for k, v in base.to_dict().items() if k != "fold_fusion"},
    }
    name = study_name("ensemble", identity)
    study = open_study(name, tune.study, journal, optuna.pruners.NopPruner())
    if mlflow.active_run() is not None:
        mlflow.set_tag("optuna.study", name)
    if not study.trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # enqueue_trial is experimental in some versions
            study.enqueue_trial(space.point(base), user_attrs={"configured": True})

    def trial_value(trial: optuna.Trial) -> float:
        recipe = space.suggest(trial, base)
        trial.set_user_attr("recipe", recipe.to_dict())
        value = score_recipe(data, recipe, objective)
        if mlflow.active_run() is not None:
            log_numeric({f"oof_{metric}": value})  # trials score out-of-fold predictions
        return value

    # Optuna logs each failed trial with its traceback; the reasons are kept in the study, the
    # MLflow runs and the summary instead.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    run_trials(
        study,
        trial_value,
        tune.trials,
        tags={"cxrdet.stage": "tune_ensemble", "optuna.study": name},
        catch=(CxrdetError,),
        label="ens-trial",
    )
    trials = study.get_trials(deepcopy=False)
    counts = {
        state.name.lower(): sum(t.state == state for t in trials)
        for state in (COMPLETE, PRUNED, FAIL)
    }
    completed = [t for t in trials if t.state == COMPLETE]
    if not completed and untuned is None:
        reasons = sorted({trial_reason(t) for t in trials if t.state == FAIL})
        raise CxrdetError(
            f"study {name}: no trial completed and the untuned recipe fails ({untuned_error}); "
            f"trial failures: {reasons[:3]}"
        )
    best = max(completed, key=lambda t: (t.value, -t.number)) if completed else None
    if best is not None and mlflow.active_run() is not None:
        log_best_trial(best)
    tuned = best is not None and (untuned is None or best.value >= untuned)
    recipe = base
    if tuned:
        found = EnsembleRecipe.from_dict(
            best.user_attrs["recipe"], key=f"study {name}, trial {best.number}"
        )
        recipe = found.with_changes(fold_fusion=base.fold_fusion)
    summary = {
        "source": "tune_ensemble" if tuned else "params",
        "study": name,
        "objective": objective,
        "metric": metric,
        metric: best.value if tuned else untuned,
        "untuned": {metric: untuned, "error": untuned_error},
        "trial": best.number if tuned else None,
        "params": best.params if tuned else {},
        "trials": counts,
        "unsearched": dict(space.fixed),
        "failed": [
            {"trial": t.number, "reason": trial_reason(t)} for t in trials if t.state == FAIL
        ][:20],
        "n_images": len(data.image_ids),
        "fold_fusion": "not tuned: out of fold each image has one fold model "
        "(ensemble.fold_fusion is used)",
    }
    return EnsembleTuneResult(recipe, summary, study)
