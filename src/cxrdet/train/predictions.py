"""Classifier prediction tables and their summaries.

A table has one row per (image, fold model, model variant, TTA view): image_id, fold,
model, view, opacity (= P(opacity)), probs. Scores average the views (and models, and
fold models) per image before the AUC, as the 1st place's ensemble did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.io import atomic_path
from cxrdet.metrics.classification import binary_metrics
from cxrdet.tracking.runs import log_numeric

# A margin around [0, 1]: a perfect classifier's curve runs along TPR 1.0 and the left edge,
# where the frame would hide it.
ROC_LIMITS = (-0.02, 1.02)


def opacity_truth(images: pd.DataFrame, boxes: pd.DataFrame) -> pd.Series:
    """1 when the image has at least one box, indexed by image_id."""
    has_boxes = images["image_id"].isin(boxes["image_id"]).astype(np.int64)
    return pd.Series(has_boxes.to_numpy(), index=images["image_id"].to_numpy())


def mean_opacity(table: pd.DataFrame, views: Sequence[str] | None = None) -> pd.Series:
    """P(opacity) per image averaged over every row (models, folds, views) or the given views."""
    rows = table if views is None else table[table["view"].isin(views)]
    return rows.groupby("image_id", sort=True)["opacity"].mean()


def opacity_auc(table: pd.DataFrame, truth: pd.Series, views: Sequence[str] | None = None) -> float:
    scores = mean_opacity(table, views)
    return binary_metrics(truth.loc[scores.index].to_numpy(), scores.to_numpy()).roc_auc


def summarize(tables: Mapping[str, pd.DataFrame], truth: pd.Series) -> dict:
    """For each table ("oof", "holdout"): `<name>_auc` (every view, model and fold model
    averaged per image), `<name>_auc_original` (the original view only: no TTA) and the
    image count; the same AUCs per model variant under "models"; `oof_auc_by_fold`."""
    summary: dict = {"views": int(next(iter(tables.values()))["view"].nunique()), "models": {}}
    for name, table in tables.items():
        summary |= _aucs(table, truth, name)
        summary[f"n_{name}_images"] = int(table["image_id"].nunique())
        if (
            name == "oof"
        ):  # each fold's own AUC: fold models differ in calibration, pooling mixes them
            summary["oof_auc_by_fold"] = {
                str(fold): _rounded(opacity_auc(rows, truth))
                for fold, rows in table.groupby("fold", sort=True)
            }
        for model, rows in table.groupby("model", sort=True):
            summary["models"].setdefault(model, {}).update(_aucs(rows, truth, name))
    return summary


def log_summary(summary: Mapping) -> None:
    """A `summarize` table's numbers in MLflow, each variant's under its name
    (`demo_label.oof.auc`, the naming scheme's model prefix); a fold number is a tag and a
    param of the run, not a metric."""
    models = summary.get("models", {})
    log_numeric({k: v for k, v in summary.items() if k not in ("fold", "models")} | models)


def roc_curves(
    tables: Mapping[str, pd.DataFrame], truth: pd.Series
) -> dict[str, tuple[pd.Series, pd.Series]]:
    """Out-of-fold curves per model and for all models, and the holdout curve of all models."""
    oof, holdout = tables["oof"], tables["holdout"]
    curves = {
        f"out-of-fold {model}": (truth, mean_opacity(rows))
        for model, rows in oof.groupby("model", sort=True)
    }
    curves["out-of-fold, all models"] = (truth, mean_opacity(oof))
    curves["holdout, all models and folds"] = (truth, mean_opacity(holdout))
    return curves


def _aucs(table: pd.DataFrame, truth: pd.Series, name: str) -> dict[str, float | None]:
    return {
        f"{name}_auc": _rounded(opacity_auc(table, truth)),
        f"{name}_auc_original": _rounded(opacity_auc(table, truth, views=["original"])),
    }


def plot_roc(curves: Mapping[str, tuple[pd.Series, pd.Series]], path: Path, title: str) -> None:
    """One ROC curve per entry {label: (truth, score)}, with its AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figure, axes = plt.subplots(figsize=(5.5, 5.0), dpi=110)
    for label, (truth, score) in curves.items():
        y = truth.loc[score.index].to_numpy()
        fpr, tpr, _ = roc_curve(y, score.to_numpy())
        auc = binary_metrics(y, score.to_numpy()).roc_auc
        axes.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f}, n={len(y)})", clip_on=False)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=title,
        xlim=ROC_LIMITS,
        ylim=ROC_LIMITS,
    )
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png")
    plt.close(figure)


def _rounded(value: float) -> float | None:
    """JSON-safe: NaN (AUC undefined with one class) becomes null."""
    return None if np.isnan(value) else round(float(value), 6)
