"""Image-level classification metrics: ROC AUC, average precision and the threshold of
best F1, for a binary label and one-vs-rest for several classes (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BinaryMetrics:
    """`best_threshold`: predict positive when score >= it; NaN metrics mean undefined
    (no positive or no negative example)."""

    roc_auc: float
    average_precision: float
    best_f1: float
    best_threshold: float
    n: int
    n_positive: int


@dataclass(frozen=True)
class MulticlassMetrics:
    """One-vs-rest metrics per class and their unweighted (macro) means over the classes
    where they are defined."""

    per_class: dict[str, BinaryMetrics]
    macro_roc_auc: float
    macro_average_precision: float


def binary_metrics(
    y_true: Sequence[int] | np.ndarray, y_score: Sequence[float] | np.ndarray
) -> BinaryMetrics:
    """Metrics of scores `y_score` for 0/1 (or boolean) labels `y_true`."""
    # Imported here: scikit-learn takes seconds to import, and the detection metrics
    # (re-exported beside these) never need it.
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 1:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} must be 1-D and equal")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("binary labels must be 0/1 or boolean")
    if not np.isfinite(y_score).all():
        raise ValueError("scores contain NaN or infinite values")
    y_true = y_true.astype(bool)
    n_positive = int(y_true.sum())
    if n_positive in (0, len(y_true)):
        # scikit-learn warns and returns meaningless values when one class is absent.
        nan = float("nan")
        return BinaryMetrics(nan, nan, nan, nan, len(y_true), n_positive)
    precision, recall, thresholds = precision_recall_curve(y_true, y_score)
    # The last (precision 1, recall 0) point has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return BinaryMetrics(
        roc_auc=float(roc_auc_score(y_true, y_score)),
        average_precision=float(average_precision_score(y_true, y_score)),
        best_f1=float(f1[best]),
        best_threshold=float(thresholds[best]),
        n=len(y_true),
        n_positive=n_positive,
    )


def multiclass_metrics(
    y_true: Sequence | np.ndarray, scores: np.ndarray, classes: Sequence | None = None
) -> MulticlassMetrics:
    """One-vs-rest metrics: column k of `scores` (n, k) scores the label `classes[k]`
    (default: the integers 0..k-1) against every other label."""
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(scores) != len(y_true):
        raise ValueError(f"scores {scores.shape} must be (n, k) with n = {len(y_true)} labels")
    classes = list(range(scores.shape[1])) if classes is None else list(classes)
    if len(classes) != scores.shape[1]:
        raise ValueError(f"{len(classes)} classes for {scores.shape[1]} score columns")
    unknown = set(y_true.tolist()) - set(classes)
    if unknown:
        raise ValueError(f"labels {sorted(map(str, unknown))} are not among the classes")
    per_class = {str(c): binary_metrics(y_true == c, scores[:, k]) for k, c in enumerate(classes)}
    return MulticlassMetrics(
        per_class=per_class,
        macro_roc_auc=_nanmean([m.roc_auc for m in per_class.values()]),
        macro_average_precision=_nanmean([m.average_precision for m in per_class.values()]),
    )


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")
