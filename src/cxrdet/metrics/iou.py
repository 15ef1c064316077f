"""Box geometry, the one home (as torchvision.ops.boxes): xywh <-> xyxy for arrays and box
tables, and vectorised IoU: pairwise matrices, per-group padded batches and greedy matching.

The detection scores match boxes image by image. Looping over images in Python costs
more than the arithmetic, so rows are grouped once (one sort) and groups with similar
box counts are stacked into padded (groups, A, B) IoU tensors; greedy matching then
walks the A axis once for every group and threshold at the same time. Also here: the
checked arrays the scores read from box tables, and their tie-proof confidence order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

Pick = Literal["best_free", "first_free", "best_any"]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) top-left x, y, width, height -> (n, 4) x_min, y_min, x_max, y_max."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def to_xyxy(boxes: pd.DataFrame) -> np.ndarray:
    """(n, 4) x_min, y_min, x_max, y_max of a box table's x, y, w, h."""
    return xywh_to_xyxy(boxes[["x", "y", "w", "h"]].to_numpy(dtype=np.float64))


def xyxy_columns(xyxy: np.ndarray) -> dict[str, np.ndarray]:
    """{"x", "y", "w", "h"} columns of (n, 4) x_min, y_min, x_max, y_max boxes."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return {
        "x": xyxy[:, 0],
        "y": xyxy[:, 1],
        "w": xyxy[:, 2] - xyxy[:, 0],
        "h": xyxy[:, 3] - xyxy[:, 1],
    }


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every (n, 4) xyxy box of `a` with every (m, 4) box of `b`; 0 for an empty union."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    side = np.clip(high - low, 0, None)
    inter = side[..., 0] * side[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (..., n, 4) with every box in `b` (..., m, 4) -> (..., n, m).

    Leading dimensions broadcast. A pair whose union has no area (two zero-area boxes)
    has IoU 0 rather than NaN.
    """
    a = np.asarray(a, dtype=np.float64)[..., :, None, :]
    b = np.asarray(b, dtype=np.float64)[..., None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) boxes given as top-left x, y, width, height."""
    return iou_xyxy(xywh_to_xyxy(a), xywh_to_xyxy(b))


@dataclass(frozen=True)
class PaddedBatch:
    """Groups stacked with padding: `a_rows[g, i]` is the row of the i-th `a` box of
    group `groups[g]` (-1 for padding), likewise `b_rows`; `iou` is (groups, A, B)."""

    groups: np.ndarray
    a_rows: np.ndarray
    b_rows: np.ndarray
    iou: np.ndarray


def _padded_rows(group: np.ndarray, n_groups: int) -> Callable[[np.ndarray], np.ndarray]:
    """For rows sorted by group: a function giving, for some groups, the (groups, width)
    matrix of their row indices, padded with -1 (a group's rows are one contiguous run)."""
    count = np.bincount(group, minlength=n_groups)
    start = np.cumsum(count) - count

    def rows(groups: np.ndarray) -> np.ndarray:
        k = np.arange(count[groups].max())
        return np.where(k < count[groups, None], start[groups, None] + k, -1)

    return rows


def padded_batches(
    a_xyxy: np.ndarray, a_group: np.ndarray, b_xyxy: np.ndarray, b_group: np.ndarray, n_groups: int
) -> Iterator[PaddedBatch]:
    """Yield the groups that have both `a` and `b` boxes as padded IoU batches.

    Rows of each side must be sorted by group; within a group the row order is kept, so
    sort by the walking order (e.g. descending confidence) before calling. Groups are
    bucketed by box counts rounded up to a power of two, which bounds the padding to 4x
    however uneven the counts are.
    """
    a_count = np.bincount(a_group, minlength=n_groups)
    b_count = np.bincount(b_group, minlength=n_groups)
    a_rows, b_rows = _padded_rows(a_group, n_groups), _padded_rows(b_group, n_groups)
    both = np.flatnonzero((a_count > 0) & (b_count > 0))
    # log2 of the counts rounded up, both in one integer key (counts < 2**32).
    bucket = np.ceil(np.log2(a_count[both])) * 64 + np.ceil(np.log2(b_count[both]))
    for key in np.unique(bucket):
        groups = both[bucket == key]
        a, b = a_rows(groups), b_rows(groups)
        yield PaddedBatch(groups, a, b, iou_xyxy(a_xyxy[a.clip(0)], b_xyxy[b.clip(0)]))


def greedy_match(
    batch: PaddedBatch, thresholds: np.ndarray, *, pick: Pick, strict: bool = True
) -> np.ndarray:
    """Walk the `a` boxes of every group in order and match each to one `b` box.

    pick="best_free": the not-yet-matched `b` of highest IoU passing the threshold.
    pick="first_free": the first not-yet-matched `b` (in row order) passing it.
    pick="best_any": the `b` of highest IoU; a hit only if it passes and is not taken
    yet (PASCAL VOC: a second detection of a matched box is a false positive).
    `strict` compares IoU > t, otherwise IoU >= t. Equal IoUs go to the first `b`.
    Returns hits (groups, thresholds, A).
    """
    # Layout (A, B, thresholds, groups): reductions over the short B axis then run over
    # whole contiguous slabs, which numpy does far faster than along a short last axis.
    # Padding `b` columns get IoU -1, below any threshold (t = 0 with >= included).
    iou = np.where(batch.b_rows[:, None, :] >= 0, batch.iou, -1.0).transpose(1, 2, 0)[:, :, None, :]
    t = np.asarray(thresholds, dtype=np.float64)[None, :, None]
    n_a, n_b, _, n = iou.shape
    free = np.ones((n_b, t.shape[1], n), dtype=bool)
    hits = np.zeros((n_a, t.shape[1], n), dtype=bool)
    for k in range(n_a):
        row = iou[k]
        passes = row > t if strict else row >= t
        if pick == "best_any":
            chosen = _first(row == row.max(axis=0)) & passes & free
        else:
            candidates = passes & free
            if pick == "best_free":
                score = np.where(candidates, row, -1.0)
                candidates &= score == score.max(axis=0)
            chosen = _first(candidates)
        chosen &= batch.a_rows[:, k] >= 0
        free &= ~chosen
        hits[k] = chosen.any(axis=0)
    return hits.transpose(2, 1, 0)


def _first(mask: np.ndarray) -> np.ndarray:
    """Keep only the first True along axis 0 of a 3-D mask."""
    if np.count_nonzero(mask) == np.count_nonzero(mask.any(axis=0)):
        return mask  # at most one True per column already
    # argmax of a boolean axis is its first True (a cumulative sum is ~10x slower).
    return mask & (np.arange(len(mask))[:, None, None] == np.argmax(mask, axis=0))


def frame_xyxy(frame: pd.DataFrame, what: str) -> np.ndarray:
    """The x, y, w, h columns of a boxes table as (n, 4) xyxy, checked finite and w, h >= 0."""
    missing = [c for c in ("image_id", "x", "y", "w", "h") if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")
    # Column by column: selecting a list of columns first costs more than the conversion.
    xywh = np.column_stack([frame[c].to_numpy(dtype=np.float64) for c in ("x", "y", "w", "h")])
    if not np.isfinite(xywh).all():
        raise ValueError(f"{what} has NaN or infinite box coordinates")
    if (xywh[:, 2:] < 0).any():
        raise ValueError(f"{what} has boxes with negative width or height")
    return xywh_to_xyxy(xywh)


def image_codes(*frames: pd.DataFrame) -> tuple[np.ndarray, pd.Index]:
    """Integer code of each row's image_id over all `frames` stacked, and the ids.

    Codes follow the sorted ids, so they do not depend on the order of the rows.
    """
    ids = pd.concat([frame["image_id"] for frame in frames], ignore_index=True).astype(str)
    codes, uniques = pd.factorize(ids, sort=True)
    return codes, pd.Index(uniques)


def frame_scores(frame: pd.DataFrame, what: str) -> np.ndarray:
    """The `score` column of a predictions table, checked present and finite."""
    if "score" not in frame.columns:
        raise ValueError(f"{what} lacks a score column")
    scores = frame["score"].to_numpy(dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} has NaN or infinite scores")
    return scores


def confidence_order(scores: np.ndarray, ties: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Row order by `keys` (most significant first), then descending score, then `ties`.

    `ties` (n, k) holds tie-breaking columns, most significant first (box coordinates,
    image codes), so the result depends on the set of rows, never on their given order.
    """
    # Unstable sort on scores: whenever that could matter (a tie), all is sorted again.
    order = np.argsort(-scores)
    for key in keys[::-1]:
        order = order[np.argsort(key[order], kind="stable")]
    ranked = [column[order] for column in (*keys, scores)]
    tied = np.ones(max(len(order) - 1, 0), dtype=bool)
    for column in ranked:
        tied &= column[1:] == column[:-1]
    if not tied.any():
        return order  # real-valued scores rarely tie: skip the costly many-key sort
    return np.lexsort((*np.asarray(ties).T[::-1], -scores, *keys[::-1]))


def xyxy_frame(image_ids: Sequence[Any], xyxy: np.ndarray, **columns: Any) -> pd.DataFrame:
    """image_id, x, y, w, h (+ columns) from (n, 4) xyxy boxes."""
    return pd.DataFrame({"image_id": list(image_ids), **xyxy_columns(xyxy), **columns})
