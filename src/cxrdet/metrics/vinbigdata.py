"""The VinBigData score: PASCAL VOC 2010 mAP at IoU > 0.4 (definition in REFERENCE.md).

`mean_average_precision` is the plain VOC mAP (also used for the `folder` format);
`vinbigdata_score` adds the competition's class-14 rule.

Per class over the whole set: all predictions of the class sorted by confidence, each
matched greedily to the truth box of highest IoU in its image (a box already matched
makes it a false positive, as in the VOC devkit), then the area under the all-point
interpolated precision envelope. The mean runs over the classes present in the truth.
Class 14 (No finding) is scored like any other class through `0 0 1 1` boxes: every
truth image without a finding box gets one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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

NO_FINDING = 14
NO_FINDING_XYWH = (0.0, 0.0, 1.0, 1.0)  # the submission's `0 0 1 1` (x_max = y_max = 1)
IOU_THRESHOLD = 0.4


@dataclass(frozen=True)
class MapResult:
    """`per_class` maps each class present in the truth to its AP; `n_truth` to its
    number of truth boxes (class-14 boxes included)."""

    score: float
    n_images: int
    per_class: dict[int, float]
    n_truth: dict[int, int]


def with_no_finding_boxes(truth: pd.DataFrame, image_ids: Iterable[str]) -> pd.DataFrame:
    """Truth boxes of classes 0-13 plus one class-14 box `0 0 1 1` per image of
    `image_ids` that has none. Class-14 rows already in `truth` (empty or not) are
    replaced, so it accepts either convention for "No finding" rows."""
    _require_class(truth, "truth")
    findings = truth[truth["class_id"] != NO_FINDING]
    normal = _image_ids(truth, image_ids).difference(findings["image_id"].astype(str).unique())
    x, y, w, h = NO_FINDING_XYWH
    extra = pd.DataFrame(
        {"image_id": normal, "x": x, "y": y, "w": w, "h": h, "class_id": NO_FINDING}
    )
    columns = ["image_id", "x", "y", "w", "h", "class_id"]
    return pd.concat([findings[columns], extra], ignore_index=True)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 2010 all-point AP: area under the precision envelope (the running maximum of
    precision from the right), summed over the recall steps."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def vinbigdata_score(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    image_ids: Iterable[str] | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> MapResult:
    """Score `predictions` (image_id, x, y, w, h, score, class_id) against `truth`
    (image_id, x, y, w, h, class_id), pixels, top-left corners.

    `image_ids` is the evaluated set (default: the truth's image ids); its images without
    a finding box get the class-14 truth box. Predictions on other images are false
    positives.
    """
    ids = _image_ids(truth, image_ids)
    return mean_average_precision(
        with_no_finding_boxes(truth, ids), predictions, image_ids=ids, iou_threshold=iou_threshold
    )


def mean_average_precision(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    image_ids: Iterable[str] | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> MapResult:
    """VOC 2010 mAP over the classes present in `truth` (same tables as
    vinbigdata_score, without the class-14 rule). `image_ids` only sets n_images
    (default: the truth's image ids)."""
    n_images = len(_image_ids(truth, image_ids))
    truth_xyxy = frame_xyxy(truth, "truth")
    pred_xyxy = frame_xyxy(predictions, "predictions")
    scores = frame_scores(predictions, "predictions")
    _require_class(truth, "truth")
    _require_class(predictions, "predictions")
    truth_class = truth["class_id"].to_numpy(dtype=np.int64)
    pred_class = predictions["class_id"].to_numpy(dtype=np.int64)

    # One group per (image, class): matching never crosses images or classes.
    images, _ = image_codes(truth, predictions)
    classes = np.concatenate([truth_class, pred_class])
    low = classes.min(initial=0)
    span = classes.max(initial=0) - low + 1
    groups, _ = pd.factorize(images * span + (classes - low), sort=True)
    truth_group, pred_group = groups[: len(truth)], groups[len(truth) :]
    ties = np.column_stack([images[len(truth) :], pred_xyxy])

    # One confidence ranking serves the matching (per group) and every class's AP.
    ranking = confidence_order(scores, ties)
    order = ranking[np.argsort(pred_group[ranking], kind="stable")]
    truth_order = np.argsort(truth_group, kind="stable")
    true_positive = np.zeros(len(predictions), dtype=bool)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    for batch in padded_batches(
        pred_xyxy[order],
        pred_group[order],
        truth_xyxy[truth_order],
        truth_group[truth_order],
        n_groups,
    ):
        hits = greedy_match(batch, np.array([iou_threshold]), pick="best_any")[:, 0, :]
        rows = batch.a_rows >= 0
        true_positive[order[batch.a_rows[rows]]] = hits[rows]

    ranked_class, ranked_tp = pred_class[ranking], true_positive[ranking]
    truth_classes, counts = np.unique(truth_class, return_counts=True)
    per_class = {}
    for cls, n_pos in zip(truth_classes.tolist(), counts.tolist()):
        tp = np.cumsum(ranked_tp[ranked_class == cls])
        per_class[cls] = voc_ap(tp / n_pos, tp / np.arange(1, len(tp) + 1))
    return MapResult(
        score=float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        n_images=n_images,
        per_class=per_class,
        n_truth=dict(zip(truth_classes.tolist(), counts.tolist())),
    )


def _image_ids(truth: pd.DataFrame, image_ids: Iterable[str] | None) -> pd.Index:
    ids = truth["image_id"] if image_ids is None else image_ids
    # Arrays and Series pass as they are (fast); a set or a generator becomes a list.
    return pd.Index(ids if hasattr(ids, "dtype") else list(ids)).astype(str).unique()


def _require_class(frame: pd.DataFrame, what: str) -> None:
    if "class_id" not in frame.columns:
        raise ValueError(f"{what} lacks a class_id column")
