"""Scores of detector box tables in any one pixel frame: the RSNA score swept over score
thresholds (the best one is a model's score), VOC mAP at IoU 0.4, and the trivial mean-box
baseline every detector report compares against."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrdet.metrics.rsna import rsna_score
from cxrdet.metrics.vinbigdata import mean_average_precision

# Score thresholds swept to report the RSNA score of a model: the best one is its score.
SCORE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def rsna_by_threshold(
    truth: pd.DataFrame, predictions: pd.DataFrame, thresholds: Sequence[float] = SCORE_THRESHOLDS
) -> dict[float, float]:
    """The RSNA score of the predictions scoring >= t, for every t (NaN: nothing to score)."""
    return {t: rsna_score(truth, predictions[predictions["score"] >= t]).score for t in thresholds}


def best_threshold(scores: dict[float, float]) -> tuple[float, float]:
    """(threshold, score) of the best finite score; (NaN, NaN) when none is finite."""
    finite = {t: s for t, s in scores.items() if math.isfinite(s)}
    if not finite:
        return math.nan, math.nan
    threshold = max(finite, key=lambda t: (finite[t], -t))
    return threshold, finite[threshold]


def detection_scores(truth: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, float]:
    """rsna: the RSNA score at the best score threshold (rsna_threshold); map: VOC mAP at IoU 0.4
    over the box classes (class-aware, the VinBigData metric without its no-finding rule)."""
    threshold, score = best_threshold(rsna_by_threshold(truth, predictions))
    average = mean_average_precision(truth, predictions).score if len(truth) else math.nan
    return {"rsna": score, "rsna_threshold": threshold, "map": average}


def mean_box_baseline(
    train_boxes: pd.DataFrame, train_images: pd.DataFrame, images: pd.DataFrame
) -> pd.DataFrame:
    """The trivial detector: in every image of `images`, the training boxes' mean box
    (relative to the image size), score 1, class 0. Boxes and images: prepared tables."""
    sizes = (
        train_images.set_index("image_id")
        .loc[train_boxes["image_id"], ["width", "height"]]
        .to_numpy(float)
    )
    relative = train_boxes[["x", "y", "w", "h"]].to_numpy(float) / np.tile(sizes, 2)
    mean = relative.mean(axis=0)
    scale = np.tile(images[["width", "height"]].to_numpy(float), 2)
    boxes = mean * scale
    return pd.DataFrame(
        {
            "image_id": images["image_id"].to_numpy(),
            "x": boxes[:, 0],
            "y": boxes[:, 1],
            "w": boxes[:, 2],
            "h": boxes[:, 3],
            "score": 1.0,
            "class_id": 0,
        }
    )


def view_rsna(
    truth: pd.DataFrame, boxes: pd.DataFrame, view: str, threshold: float | None = None
) -> tuple[float, float]:
    """(score, threshold) of one TTA view's boxes (a per-view prediction table: its `view`
    column): at `threshold`, or at the best of SCORE_THRESHOLDS."""
    chosen = boxes[boxes["view"] == view]
    if threshold is None:
        return best_threshold(rsna_by_threshold(truth, chosen))[::-1]
    return rsna_score(truth, chosen[chosen["score"] >= threshold]).score, threshold
