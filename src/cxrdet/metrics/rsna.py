"""The RSNA Pneumonia Detection score: mean over images of TP / (TP + FP + FN), averaged
over IoU thresholds 0.40..0.75 (definition in REFERENCE.md).

variant="official" walks the predictions in descending confidence and matches each to
the not-yet-matched truth box of highest IoU > t. variant="kernel" reproduces the public
kernel port: it walks the truth boxes in the given order and matches each to the first
not-yet-matched prediction (descending confidence) with IoU >= t, so scores can be
compared with public notebooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from cxrdet.metrics.iou import (
    confidence_order,
    frame_scores,
    frame_xyxy,
    greedy_match,
    image_codes,
    padded_batches,
)

RSNA_THRESHOLDS: tuple[float, ...] = tuple(round(0.40 + 0.05 * k, 2) for k in range(8))
Variant = Literal["official", "kernel"]


@dataclass(frozen=True)
class RsnaResult:
    """`per_image` has one row per scored image: image_id, n_truth, n_pred, score, and
    the score at each threshold (columns named by the threshold, e.g. "0.4")."""

    score: float
    n_images: int
    per_threshold: dict[float, float]
    per_image: pd.DataFrame
    variant: Variant


def rsna_score(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    variant: Variant = "official",
    thresholds: tuple[float, ...] = RSNA_THRESHOLDS,
) -> RsnaResult:
    """Score `predictions` (image_id, x, y, w, h, score) against `truth` (image_id, x, y,
    w, h), both in pixels with top-left corners.

    Every image that has a truth box or a prediction is scored; an image with neither
    never appears in these tables and so is left out, as the definition requires.
    """
    if variant not in ("official", "kernel"):
        raise ValueError(f"unknown RSNA variant {variant!r}; expected 'official' or 'kernel'")
    truth_xyxy = frame_xyxy(truth, "truth")
    pred_xyxy = frame_xyxy(predictions, "predictions")
    scores = frame_scores(predictions, "predictions")
    codes, image_ids = image_codes(truth, predictions)
    truth_group, pred_group = codes[: len(truth)], codes[len(truth) :]
    n_images = len(image_ids)

    truth_order = np.argsort(truth_group, kind="stable")  # given order within an image
    pred_order = confidence_order(scores, pred_xyxy, pred_group)
    truth_side = (truth_xyxy[truth_order], truth_group[truth_order])
    pred_side = (pred_xyxy[pred_order], pred_group[pred_order])
    if variant == "official":
        sides, pick, strict = (pred_side, truth_side), "best_free", True
    else:
        sides, pick, strict = (truth_side, pred_side), "first_free", False

    tp = np.zeros((n_images, len(thresholds)))
    for batch in padded_batches(*sides[0], *sides[1], n_images):
        hits = greedy_match(batch, np.array(thresholds), pick=pick, strict=strict)
        tp[batch.groups] = hits.sum(axis=-1)
    n_truth = np.bincount(truth_group, minlength=n_images)
    n_pred = np.bincount(pred_group, minlength=n_images)
    # TP + FP + FN = n_pred + n_truth - TP, never 0 for an image that is listed.
    at_threshold = tp / ((n_truth + n_pred)[:, None] - tp)
    image_scores = at_threshold.mean(axis=1)

    per_image = pd.DataFrame(
        {"image_id": pd.array(image_ids, dtype="string"), "n_truth": n_truth, "n_pred": n_pred}
    )
    per_image["score"] = image_scores
    for k, t in enumerate(thresholds):
        per_image[f"{t:g}"] = at_threshold[:, k]
    # With no image at all the score is undefined: NaN, not a warning-raising empty mean.
    means = at_threshold.mean(axis=0) if n_images else np.full(len(thresholds), np.nan)
    return RsnaResult(
        score=float(means.mean()),
        n_images=n_images,
        per_threshold={t: float(m) for t, m in zip(thresholds, means)},
        per_image=per_image,
        variant=variant,
    )
