"""DVC stage `tune_ensemble`: the ensemble recipe (TTA views, fusion, shrink, gating, cuts)
searched by Optuna on the cached out-of-fold predictions; no network runs.

Writes results/tuning/ensemble.json: {"recipe": <params' `ensemble` shape>, "source",
"objective" (map or rsna: tune_ensemble.objective resolved for the data's format, also the
MLflow param `objective`), "metric", <metric>, "untuned", "trials", ...}, which `evaluate`
and `cxrdet predict` read.
With tune_ensemble.enabled false it holds params' `ensemble` as it is. The study lives in
results/tuning/ensemble.journal (or tune_ensemble.study.storage): a killed run resumes,
and more workers may join it by running this script again in parallel. Its history,
parameter importances and parallel coordinates: results/tuning/ensemble_study.html and
ensemble_{history,importances,parallel}.png, also in MLflow.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna

from cxrdet.config import load_params
from cxrdet.data.datasets import read_prepared
from cxrdet.ensemble import EnsembleRecipe
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.formats import metric_name, resolve_objective
from cxrdet.io import write_json
from cxrdet.paths import ENSEMBLE, PREPARED_DETECT
from cxrdet.tracking.runs import log_numeric, stage_run
from cxrdet.tuning.ensemble import (
    TuningData,
    read_fold_predictions,
    score_recipe,
    tune_ensemble,
)
from cxrdet.tuning.study_plots import PLOTLY_JS, write_study_plots

JOURNAL = "results/tuning/ensemble.journal"
HTML = "results/tuning/ensemble_study.html"
PNGS = {
    kind: f"results/tuning/ensemble_{kind}.png" for kind in ("history", "importances", "parallel")
}


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    tune = params.tune_ensemble
    base = EnsembleRecipe.from_params(params.ensemble.model_dump(), key="ensemble")
    prepared = read_prepared(root / PREPARED_DETECT)
    predictions = read_fold_predictions(
        root, params.detector.folds, params.classifier.folds, "oof", prepared.images
    )
    image_ids = sorted(predictions.images["image_id"].unique())
    missing = sorted(set(image_ids) - set(predictions.classifier["image_id"]))
    if missing:
        raise ConfigError(
            f"classifier.folds {params.classifier.folds} must cover detector.folds "
            f"{params.detector.folds}: "
            f"no out-of-fold classifier prediction for {len(missing)} images, e.g. {missing[0]!r}"
        )
    labels = list(prepared.info["image_labels"])
    data = TuningData(
        predictions=predictions,
        truth=prepared.boxes[prepared.boxes["image_id"].isin(image_ids)].reset_index(drop=True),
        image_ids=image_ids,
        fmt=prepared.info["format"],
        class_names={v.name: labels for v in params.classifier.variants if v.target == "label"},
    )
    objective = resolve_objective(data.fmt, tune.objective)
    metric = metric_name(data.fmt, objective)
    with stage_run(
        "tune_ensemble",
        root=root,
        experiment=params.tracking.experiment,
        params={"tune_ensemble": tune.model_dump(), "ensemble": params.ensemble.model_dump()},
        tags={"cxrdet.dataset": "detect", "cxrdet.data_hash": prepared.info["data_hash"]},
        tracking_uri=params.tracking.tracking_uri,
    ):
        mlflow.log_params({"objective": objective, "objective_metric": metric})
        if tune.enabled:
            result = tune_ensemble(data, base, tune, root / JOURNAL)
            recipe, summary, study = result.recipe, result.summary, result.study
        else:
            try:
                value, error = score_recipe(data, base, objective), None
            except CxrdetError as failure:
                value, error = None, str(failure)
            recipe, summary = (
                base,
                {
                    "source": "params",
                    "objective": objective,
                    "metric": metric,
                    metric: value,
                    "untuned": {metric: value, "error": error},
                },
            )
            study = optuna.create_study(
                study_name="tune_ensemble disabled"
            )  # in memory: plots say why they are empty
        write_json({"recipe": recipe.to_dict(), **summary}, root / ENSEMBLE)
        write_study_plots(study, root / HTML, {kind: root / path for kind, path in PNGS.items()})
        log_numeric(
            {
                f"best_oof_{metric}": summary[metric],  # the recipe kept: tuned or untuned
                f"untuned_oof_{metric}": summary["untuned"][metric],
                "trials": summary.get("trials", {}),
            }
        )
        for path in (ENSEMBLE, *PNGS.values()):
            mlflow.log_artifact(str(root / path))
        for path in (HTML, Path(HTML).with_name(PLOTLY_JS)):  # the page and the script it loads
            mlflow.log_artifact(str(root / path), artifact_path="study")
    untuned = summary["untuned"][metric]
    print(
        f"ensemble recipe ({summary['source']}): out-of-fold {metric} {_text(summary[metric])} "
        f"(untuned {_text(untuned)}) over {len(image_ids)} images, trials "
        f"{summary.get('trials', {})} -> {ENSEMBLE}"
    )


def _text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
