"""DVC stage `evaluate`: the tuned ensemble on the holdout, which no training or tuning saw.

Runs the predictor `cxrdet predict` serves (cxrdet.infer.predictor) on the holdout's raw
image files: every fold classifier and detector with their TTA views, the recipe of
results/tuning/ensemble.json (its fold fusion is params' `ensemble.fold_fusion`); with
detector_final.enabled, the final detectors of train_detector_final instead of the fold
detectors (metrics.json "detectors": final | folds). Writes
results/evaluate/:
    metrics.json     rsna_score and map40 (VinBigData: map40, and rsna_score when tuned for
                     it), "objective"/"metric": what tune_ensemble maximised (its metric
                     first), auc (classifiers' P(opacity)), and `ablation` in that metric:
                     each fold model alone, no TTA, no gating, no shrink, each fusion
                     method, the untuned recipe, side by side; with two detector families,
                     each family alone and both fused by each fusion method
    submission.csv   the competition submission of the holdout
    truth.csv        the holdout truth in the competition layout: `evaluate_command` in
                     metrics.json rescores submission.csv with the same result
    threshold.csv/png, pr.csv/png, roc.png, overlay.png   plots (DVC plots, MLflow artifacts)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from cxrdet.config import Params, load_params
from cxrdet.data.datasets import Prepared, read_prepared
from cxrdet.data.folds import HOLDOUT, fold_ids
from cxrdet.ensemble import EnsembleRecipe
from cxrdet.errors import CxrdetError
from cxrdet.evaluation import (
    Holdout,
    ablations,
    auc,
    holdout_overlay,
    plot_curves,
    precision_recall,
    roc_inputs,
    threshold_curve,
    write_truth_file,
)
from cxrdet.formats import metric_name, output_format, resolve_objective
from cxrdet.infer.predictor import EnsemblePredictor, LoadedImages, project_spec
from cxrdet.io import write_csv, write_json
from cxrdet.paths import EVALUATE, FOLDS, PREPARED_DETECT, resolve
from cxrdet.runtime.session import start_runtime, stop_runtime
from cxrdet.tracking.runs import log_numeric, stage_run

PR_POINTS = 2000  # pr.csv keeps at most this many points (DVC renders every row)
PLOTS = ("threshold.png", "pr.png", "roc.png", "overlay.png")


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    prepared = read_prepared(root / PREPARED_DETECT)
    split = pd.read_parquet(root / FOLDS)
    image_ids = fold_ids(split, HOLDOUT)
    if not image_ids:
        raise CxrdetError(
            "data/split/folds.parquet has no holdout images (split.holdout_fraction is 0)"
        )
    spec = project_spec(root)
    runtime = start_runtime(params.train)  # device and CPU threads as every model stage sets them
    try:
        with stage_run(
            "evaluate",
            root=root,
            experiment=params.tracking.experiment,
            params={"recipe": spec.recipe, "recipe_source": spec.source},
            tags={"cxrdet.dataset": "detect", "cxrdet.data_hash": prepared.info["data_hash"]},
            tracking_uri=params.tracking.tracking_uri,
        ):
            predictor = EnsemblePredictor(spec, root, device=runtime.device.type)
            raw_dir = resolve(params.data.detect.raw_dir, root)
            paths = [
                raw_dir / path
                for path in prepared.images.set_index("image_id").loc[image_ids, "path"]
            ]
            loaded = predictor.load_images(paths, image_ids)
            holdout = Holdout(
                predictor.predict_members(loaded),
                prepared.boxes[prepared.boxes["image_id"].isin(image_ids)],
                image_ids,
                prepared.info["format"],
                predictor.class_names,
                objective=predictor.spec.source.get(
                    "objective", "auto"
                ),  # what tune_ensemble maximised
            )
            metrics = report(root / EVALUATE, params, prepared, predictor, holdout, loaded)
            # Every number is the holdout's: `holdout.rsna_score`, as the fold stages name
            # their holdout scores; ablation rows as models (`ablation.no_tta.holdout.map40`),
            # without the ensemble's own row (that is `holdout.<metric>`).
            log_numeric({k: v for k, v in metrics.items() if k != "ablation"}, prefix="holdout.")
            metric = metric_name(holdout.fmt, holdout.objective)
            log_numeric(
                {
                    name: {f"holdout_{metric}": row["score"]}
                    for name, row in metrics["ablation"].items()
                    if row["score"] is not None and name != "ensemble"
                },
                prefix="ablation.",
            )
            for name in (
                "metrics.json",
                "submission.csv",
                "truth.csv",
                "threshold.csv",
                "pr.csv",
                *PLOTS,
            ):
                mlflow.log_artifact(str(root / EVALUATE / name))
    finally:
        stop_runtime()
    score = metrics[metrics["metric"]]
    print(
        f"holdout {metrics['metric']} {'n/a' if score is None else f'{score:.4f}'} (AUC "
        f"{metrics['auc']}) "
        f"over {len(image_ids)} images; ablation: "
        + ", ".join(f"{k} {v['score']}" for k, v in metrics["ablation"].items())
        + f" -> {EVALUATE}"
    )


def report(
    out: Path,
    params: Params,
    prepared: Prepared,
    predictor: EnsemblePredictor,
    holdout: Holdout,
    loaded: LoadedImages,
) -> dict[str, Any]:
    """Write every output of the stage; return the metrics."""
    fmt, class_names, ids = holdout.fmt, list(prepared.info["class_names"]), holdout.image_ids
    done = predictor.ensemble(holdout.members)
    final = done.boxes
    layout = output_format(fmt)
    layout.write_submission(final, out / "submission.csv", class_names, ids)
    write_truth_file(fmt, holdout.truth, ids, class_names, out / "truth.csv")
    command = (
        f"cxrdet evaluate --format {layout.key} --truth {EVALUATE}/truth.csv --submission "
        f"{EVALUATE}/submission.csv" + layout.evaluate_flags
    )

    metric, truth = metric_name(fmt, holdout.objective), holdout.opacity_truth()
    probabilities = done.probabilities.reindex(ids)
    untuned = EnsembleRecipe.from_params(params.ensemble.model_dump(), key="ensemble")
    metrics = {
        **holdout.metrics(
            final
        ),  # the objective's metric first, then the other (rsna_score, map40)
        "objective": resolve_objective(fmt, holdout.objective),
        "metric": metric,
        "auc": auc(truth, probabilities["opacity"]),
        "n_images": len(ids),
        "n_boxes": len(final),
        "detectors": "final"
        if params.detector_final.enabled
        else "folds",  # train_detector_final's or the folds'
        "recipe_source": predictor.spec.source.get("source"),
        "evaluate_command": command,
        "ablation": ablations(holdout, predictor.recipe, untuned),
    }
    write_json(metrics, out / "metrics.json")

    threshold, pr = (
        threshold_curve(holdout, predictor.recipe),
        precision_recall(holdout.truth, final),
    )
    write_csv(threshold, out / "threshold.csv")
    write_csv(pr.iloc[:: max(1, -(-len(pr) // PR_POINTS))], out / "pr.csv")
    plot_curves(
        threshold,
        predictor.recipe.score_threshold,
        metric,
        pr,
        roc_inputs(holdout, final, probabilities),
        truth,
        {kind: out / f"{kind}.png" for kind in ("threshold", "pr", "roc")},
    )
    holdout_overlay(
        loaded.images.arrays, ids, loaded.sizes, holdout.truth, final, out / "overlay.png"
    )
    return metrics
