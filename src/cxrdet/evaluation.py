"""Holdout evaluation of the ensemble: the competition metric, an ablation table (what each
trick is worth), curves and an overlay grid, and a truth file for `cxrdet evaluate`.

Every number comes from one set of holdout predictions (every fold model, every TTA view,
cxrdet.ensemble.MemberPredictions): an ablation only changes the recipe or the fold models
it keeps, so no network runs twice.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.data.cache import read_cached
from cxrdet.data.datasets import Prepared, truth_boxes
from cxrdet.data.folds import HOLDOUT, fold_ids
from cxrdet.ensemble import FUSERS, EnsembleRecipe, Fusion, Gating, MemberPredictions, apply_recipe
from cxrdet.errors import CxrdetError
from cxrdet.formats import competition_score, metric_name, output_format, reported_objectives
from cxrdet.infer.detector_tta import FINAL_FOLD, ORIGINAL
from cxrdet.io import atomic_path
from cxrdet.metrics import binary_metrics, iou_xywh, mean_average_precision, rsna_score
from cxrdet.metrics.detection import mean_box_baseline, view_rsna
from cxrdet.metrics.vinbigdata import NO_FINDING
from cxrdet.train.predictions import ROC_LIMITS
from cxrdet.viz import overlay_grid

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(20))  # the score-vs-threshold sweep
PR_IOU = 0.4  # a predicted box is a true positive above this IoU (VinBigData's mAP@0.4)


@dataclass(frozen=True)
class Holdout:
    """What every holdout number is computed from."""

    members: MemberPredictions
    truth: pd.DataFrame  # boxes (image_id, x, y, w, h, class_id), original pixels
    image_ids: list[str]
    fmt: str
    class_names: Mapping[str, Sequence[str]]  # classifier model -> classes of its probs
    objective: str = (
        "auto"  # the metric tuned (tune_ensemble.objective): ablation and curves use it
    )

    def score(self, boxes: pd.DataFrame, objective: str | None = None) -> float:
        """The metric of `objective` (default: the holdout's) of `boxes`."""
        return competition_score(
            self.fmt, self.truth, boxes, self.image_ids, objective or self.objective
        )

    def metrics(self, boxes: pd.DataFrame) -> dict[str, float | None]:
        """Every metric evaluate reports (on folder data mAP@0.4 and the RSNA score), by name,
        the objective's first; None where undefined."""
        return {
            metric_name(self.fmt, name): finite_or_none(self.score(boxes, name))
            for name in reported_objectives(self.fmt, self.objective)
        }

    def final(
        self, recipe: EnsembleRecipe, members: MemberPredictions | None = None
    ) -> pd.DataFrame:
        return apply_recipe(
            self.members if members is None else members, recipe, self.class_names
        ).boxes

    def opacity_truth(self) -> pd.Series:
        """1 where an image has a box (a finding), by image id."""
        return pd.Series(
            np.isin(self.image_ids, self.truth["image_id"]).astype(int), index=self.image_ids
        )


def ablations(
    holdout: Holdout, recipe: EnsembleRecipe, untuned: EnsembleRecipe | None = None
) -> dict[str, dict[str, Any]]:
    """The metric of the tuned recipe with all fold models ("ensemble"), of each fold model
    alone, without TTA (original view, one classifier view), without gating, without shrink,
    with each fusion method (its default parameters, for views and folds), and untuned.
    With several detector families (`model` names): each family alone ("model_<name>") and
    the families fused by each method ("models_fused_<method>": the fold fusion, where fold
    models and families meet, by that method; the views as tuned)."""
    folds = sorted(holdout.members.images["fold"].unique().tolist())
    models = sorted(holdout.members.images["model"].unique().tolist())
    # name -> (recipe, fold models kept or None: all, detector models kept or None: all)
    variants: dict[str, tuple[EnsembleRecipe, list[int] | None, list[str] | None]] = {
        "ensemble": (recipe, None, None)
    }
    # Final detectors (FINAL_FOLD: stage train_detector_final) have no fold: "ensemble" is them
    # alone.
    variants |= {f"fold{k}": (recipe, [k], None) for k in folds if k != FINAL_FOLD}
    variants["no_tta"] = (
        recipe.with_changes(detector_views=("original",), classifier_views=1),
        None,
        None,
    )
    variants["no_gating"] = (recipe.with_changes(gating=Gating("none", {})), None, None)
    variants["no_shrink"] = (recipe.with_changes(shrink=1.0), None, None)
    for method in FUSERS:
        variants[f"fusion_{method}"] = (
            recipe.with_changes(view_fusion=Fusion(method, {}), fold_fusion=Fusion(method, {})),
            None,
            None,
        )
    if len(models) > 1:
        variants |= {f"model_{name}": (recipe, None, [name]) for name in models}
        for method in FUSERS:
            variants[f"models_fused_{method}"] = (
                recipe.with_changes(fold_fusion=Fusion(method, {})),
                None,
                None,
            )
    if untuned is not None:
        variants["untuned"] = (untuned, None, None)
    table = {}
    for name, (variant, only, kept_models) in variants.items():
        members = holdout.members if only is None else holdout.members.only_folds(only)
        if kept_models is not None:
            members = only_models(members, kept_models)
        try:
            boxes = holdout.final(variant, members)
            table[name] = {"score": finite_or_none(holdout.score(boxes)), "n_boxes": len(boxes)}
        except CxrdetError as error:  # e.g. an untuned recipe naming views the run has not
            table[name] = {"score": None, "n_boxes": 0, "error": str(error)}
    return table


def only_models(members: MemberPredictions, models: Sequence[str]) -> MemberPredictions:
    """The detector predictions of the `models` (families) only; every classifier kept."""
    return replace(
        members,
        boxes=members.boxes[members.boxes["model"].isin(models)],
        images=members.images[members.images["model"].isin(models)],
    )


def threshold_curve(holdout: Holdout, recipe: EnsembleRecipe) -> pd.DataFrame:
    """threshold, score: the metric of the recipe's boxes cut at each threshold instead of
    its score_threshold (cutting after the top-k equals cutting before it)."""
    uncut = holdout.final(recipe.with_changes(score_threshold=0.0))
    return pd.DataFrame(
        {
            "threshold": THRESHOLDS,
            "score": [
                finite_or_none(holdout.score(uncut[uncut["score"] >= t])) for t in THRESHOLDS
            ],
        }
    )


def precision_recall(
    truth: pd.DataFrame, predictions: pd.DataFrame, iou: float = PR_IOU
) -> pd.DataFrame:
    """Box-level curve: predictions by descending score, each a true positive when its
    best-overlapping truth box of its image and class is unmatched and IoU > `iou` (VOC);
    columns score, precision, recall. The no-finding box (VinBigData) is left out."""
    truth = truth[truth["class_id"] != NO_FINDING]
    predictions = predictions[predictions["class_id"] != NO_FINDING]
    hits = np.zeros(len(predictions), dtype=bool)
    ranked = predictions.reset_index(drop=True).sort_values("score", ascending=False, kind="stable")
    truth_groups = {key: group for key, group in truth.groupby(["image_id", "class_id"])}
    for key, group in ranked.groupby(["image_id", "class_id"], sort=False):
        own = truth_groups.get(key)
        if own is None:
            continue
        overlap = iou_xywh(
            group[["x", "y", "w", "h"]].to_numpy(float), own[["x", "y", "w", "h"]].to_numpy(float)
        )
        taken = np.zeros(len(own), dtype=bool)
        for row, index in enumerate(group.index):  # by descending score
            best = int(np.argmax(overlap[row]))
            if overlap[row, best] > iou and not taken[best]:
                taken[best] = hits[index] = True
    found = np.cumsum(hits[ranked.index.to_numpy()])
    count = np.arange(1, len(ranked) + 1)
    return pd.DataFrame(
        {
            "score": ranked["score"].to_numpy(),
            "precision": found / count,
            "recall": found / max(len(truth), 1),
        }
    )


def image_scores(boxes: pd.DataFrame, image_ids: Sequence[str]) -> pd.Series:
    """The ensemble's image score: its best finding box's score (0 without one)."""
    findings = boxes[boxes["class_id"] != NO_FINDING]
    return findings.groupby("image_id")["score"].max().reindex(list(image_ids), fill_value=0.0)


def roc_inputs(
    holdout: Holdout, final: pd.DataFrame, probabilities: pd.DataFrame
) -> dict[str, pd.Series]:
    """Image-level scores to draw ROC curves of: the classifiers' P(opacity) and the ensemble."""
    return {
        "classifiers P(opacity)": probabilities["opacity"].reindex(holdout.image_ids),
        "ensemble (best box score)": image_scores(final, holdout.image_ids),
    }


def auc(truth: pd.Series, scores: pd.Series) -> float | None:
    return finite_or_none(
        binary_metrics(truth.loc[scores.index].to_numpy(), scores.to_numpy()).roc_auc
    )


# ---------------------------------------------------------------- truth files


def write_truth_file(
    fmt: str, truth: pd.DataFrame, image_ids: Sequence[str], class_names: Sequence[str], path: Path
) -> Path:
    """The holdout truth in the competition's train-label layout, for `cxrdet evaluate`
    (cxrdet.formats: rsna stage_2_train_labels.csv, vinbigdata train.csv, folder
    annotations.csv). Coordinates as exact decimal floats."""
    rows = output_format(fmt).truth_rows(truth, image_ids, class_names)
    with atomic_path(path) as partial, partial.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return Path(path)


# ---------------------------------------------------------------- plots


def plot_curves(
    threshold: pd.DataFrame,
    chosen: float,
    metric: str,
    pr: pd.DataFrame,
    roc: Mapping[str, pd.Series],
    truth: pd.Series,
    paths: Mapping[str, Path],
) -> None:
    """threshold.png (metric vs score threshold, the tuned one marked), pr.png, roc.png."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figure, axes = plt.subplots(figsize=(5.5, 4.0), dpi=110)
    axes.plot(threshold["threshold"], threshold["score"], marker=".")
    axes.axvline(chosen, color="grey", linestyle=":", label=f"tuned threshold {chosen:.3f}")
    axes.set(
        xlabel="final score threshold", ylabel=metric, title=f"Holdout {metric} vs score threshold"
    )
    axes.legend(fontsize=7)
    _save(figure, paths["threshold"])

    figure, axes = plt.subplots(figsize=(5.5, 4.0), dpi=110)
    axes.plot(pr["recall"], pr["precision"], drawstyle="steps-post")
    axes.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"Holdout boxes, precision-recall (IoU > {PR_IOU})",
    )
    _save(figure, paths["pr"])

    figure, axes = plt.subplots(figsize=(5.5, 5.0), dpi=110)
    for label, scores in roc.items():
        y = truth.loc[scores.index].to_numpy()
        if len(set(y.tolist())) == 2:
            fpr, tpr, _ = roc_curve(y, scores.to_numpy())
            axes.plot(fpr, tpr, label=f"{label} (AUC {auc(truth, scores):.3f})", clip_on=False)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=ROC_LIMITS,
        ylim=ROC_LIMITS,
        title=f"Holdout images with findings, n={len(truth)}",
    )
    axes.legend(loc="lower right", fontsize=7)
    _save(figure, paths["roc"])


def holdout_overlay(
    images: Sequence[np.ndarray],
    image_ids: Sequence[str],
    sizes: pd.DataFrame,
    truth: pd.DataFrame,
    final: pd.DataFrame,
    path: Path,
    count: int = 12,
) -> None:
    """Holdout X-rays (those with findings first) as the models saw them: truth boxes green,
    the ensemble's boxes red with their scores."""
    index = {image_id: k for k, image_id in enumerate(image_ids)}
    sized = sizes.set_index("image_id")

    def image_of(image_id: str) -> tuple[np.ndarray, float, float]:
        image = images[index[image_id]]
        return (
            image,
            image.shape[1] / sized.loc[image_id, "width"],
            image.shape[0] / sized.loc[image_id, "height"],
        )

    shown = final[final["class_id"] != NO_FINDING]
    overlay_grid(
        image_ids, truth, shown, image_of, lambda image_id: str(image_id)[:16], path, count
    )


def fold_overlay(
    prepared: Prepared,
    image_ids: Sequence[str],
    predicted: pd.DataFrame,
    threshold: float,
    path: Path,
    title: str,
    count: int = 12,
) -> None:
    """A PNG grid of cached images (hits, misses and false alarms first): truth boxes green,
    the original view's predictions scoring >= threshold red with their scores; `title` (the
    model) once, on the legend line."""
    images = prepared.images.set_index("image_id")

    def image_of(image_id: str) -> tuple[np.ndarray, float, float]:
        row = images.loc[image_id]
        return read_cached(prepared.root / row["cache_path"]), row["scale_x"], row["scale_y"]

    shown = predicted[(predicted["view"] == ORIGINAL) & (predicted["score"] >= threshold)]
    overlay_grid(
        image_ids,
        truth_boxes(prepared, image_ids),
        shown,
        image_of,
        lambda image_id: image_id[:12],
        path,
        count,
        caption=f"{title}, score >= {threshold:g}",
    )


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png")
    plt.close(figure)


def finite_or_none(value: float) -> float | None:
    """JSON-safe: NaN (nothing to score) becomes None."""
    return float(value) if math.isfinite(value) else None


# ---------------------------------------------------------------- the fold models' report


@dataclass(frozen=True)
class FoldsReport:
    metrics: dict[str, Any]
    threshold: float  # the out-of-fold best score threshold (original view)
    best_fold: int  # the fold model with the best out-of-fold score


def folds_report(
    prepared: Prepared,
    split: pd.DataFrame,
    oof: dict[int, pd.DataFrame],
    holdout: dict[int, pd.DataFrame],
) -> FoldsReport:
    """Out-of-fold and holdout RSNA scores of fold models' box tables (by fold), and the
    mean-box baseline's; the out-of-fold mAP at IoU 0.4 (VinBigData's metric without its
    no-finding rule). The threshold is chosen on the out-of-fold original view only."""
    folds = sorted(oof)
    oof_ids = split.loc[split["fold"].isin(folds), "image_id"].tolist()
    holdout_ids = fold_ids(split, HOLDOUT)
    oof_truth, holdout_truth = truth_boxes(prepared, oof_ids), truth_boxes(prepared, holdout_ids)
    every = pd.concat(oof.values(), ignore_index=True)
    score, threshold = view_rsna(oof_truth, every, ORIGINAL)
    per_fold = {
        f"fold{k}": {
            "oof_rsna_score": view_rsna(
                truth_boxes(prepared, fold_ids(split, k)), oof[k], ORIGINAL, threshold=threshold
            )[0],
            "holdout_rsna_score": view_rsna(
                holdout_truth, holdout[k], ORIGINAL, threshold=threshold
            )[0],
        }
        for k in folds
    }
    trained_on = prepared.boxes[prepared.boxes["image_id"].isin(oof_ids)]
    baseline = {
        f"{part}_rsna_score": rsna_score(
            truth,
            mean_box_baseline(
                trained_on, prepared.images, prepared.images[prepared.images["image_id"].isin(ids)]
            ),
        ).score
        for part, truth, ids in (
            ("oof", oof_truth, oof_ids),
            ("holdout", holdout_truth, holdout_ids),
        )
    }
    metrics = {
        "oof_rsna_score": score,
        "oof_rsna_threshold": threshold,
        "oof_map": mean_average_precision(oof_truth, every[every["view"] == ORIGINAL]).score,
        "holdout_rsna_score": float(np.mean([f["holdout_rsna_score"] for f in per_fold.values()])),
        "oof_rsna_score_by_view": {
            view: view_rsna(oof_truth, every, view)[0] for view in sorted(every["view"].unique())
        },
        "folds": per_fold,
        "baseline": {"method": "the training boxes' mean box in every image", **baseline},
        "n_oof": len(oof_ids),
        "n_holdout": len(holdout_ids),
    }
    best_fold = max(folds, key=lambda k: _finite_or_low(per_fold[f"fold{k}"]["oof_rsna_score"]))
    return FoldsReport(metrics, threshold, best_fold)


def _finite_or_low(value: float) -> float:
    return value if math.isfinite(value) else -math.inf
