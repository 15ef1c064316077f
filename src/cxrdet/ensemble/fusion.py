"""Box fusion of prediction tables: one entry point, a registry of methods.

`fuse_boxes` fuses the boxes of the ensemble members named by `over` (TTA views, fold
models, model variants) into one set per remaining key (image_id and the key columns
not in `over`) and class. The 1st place fused in two stages, each a call:

    per_model = fuse_boxes(boxes, "vote", over=("view",), members=images)
    final = fuse_boxes(per_model, "vote", over=("fold", "model"), members=images)

A member that predicted an image but found nothing there still counts (it votes "no"):
pass the images table (one row per image and member, boxes or not) as `members`.
Without it the members of an image are those with boxes on it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.ensemble.group import BoxGroup, Fuser
from cxrdet.ensemble.nms import LinearSoftNms, Nms, SoftNms
from cxrdet.ensemble.tables import (
    KEY_COLUMNS,
    VALUE_COLUMNS,
    EnsembleInputError,
    check_number,
    checked_boxes,
    image_sizes,
    make_registered,
    require_columns,
)
from cxrdet.ensemble.vote import VoteMerge
from cxrdet.ensemble.wbf import WeightedBoxesFusion
from cxrdet.errors import ConfigError
from cxrdet.metrics.iou import to_xyxy, xyxy_columns

FUSERS: dict[str, type] = {
    "wbf": WeightedBoxesFusion,
    "vote": VoteMerge,
    "nms": Nms,
    "soft_nms": SoftNms,
    "soft_nms_linear": LinearSoftNms,
}


def make_fuser(method: str, **params: Any) -> Fuser:
    """The parameters of `method`; ConfigError on an unknown method, name or value."""
    return make_registered(FUSERS, method, params, "fusion method")


def fuse_boxes(
    boxes: pd.DataFrame,
    method: str,
    sizes: pd.DataFrame | Mapping[str, tuple[float, float]] | None = None,
    *,
    over: Sequence[str] = ("view",),
    members: pd.DataFrame | None = None,
    weights: Mapping[Hashable, float] | None = None,
    **params: Any,
) -> pd.DataFrame:
    """Fused boxes: the key columns not in `over`, then x, y, w, h, score, class_id;
    by key, class and descending score.

    sizes: image_id -> width, height (a table or a mapping); needed by "wbf".
    members: rows with the key columns of every (image, member) that was predicted.
    weights: member -> weight > 0 (default 1); a member is its `over` value, or the
        tuple of them when `over` has several columns.
    params: the method's parameters (see FUSERS).
    """
    fuser = make_fuser(method, **params)
    checked_boxes(boxes)
    keys, over = _keys(boxes, over)
    if fuser.needs_sizes and sizes is None:
        raise EnsembleInputError(f"fusion {method!r} needs the image sizes")
    boxes = boxes[boxes["score"] > 0]  # no confidence to weigh by (0/0 in weighted means)
    if boxes.empty:
        return boxes[[*keys, *VALUE_COLUMNS]].reset_index(drop=True)
    roster = _roster(boxes if members is None else members, keys, over, weights)
    located = boxes[keys + over].merge(roster, on=keys + over, how="left", validate="many_to_one")
    if located["_group"].isna().any():
        first = located[located["_group"].isna()].iloc[0]
        raise EnsembleInputError(
            f"members lack the (image, member) of some boxes, e.g. {dict(first[keys + over])}"
        )

    group = located["_group"].to_numpy(np.int64)
    classes = boxes["class_id"].to_numpy(np.int64)
    order = np.lexsort((classes, group))
    group, classes = group[order], classes[order]
    xyxy, scores = to_xyxy(boxes)[order], boxes["score"].to_numpy(np.float64)[order]
    member = located["_member"].to_numpy(np.int64)[order]
    starts = np.flatnonzero(np.r_[True, (group[1:] != group[:-1]) | (classes[1:] != classes[:-1])])
    ends = np.r_[starts[1:], len(group)]

    weights_of = np.split(
        roster["_weight"].to_numpy(), np.flatnonzero(np.diff(roster["_group"])) + 1
    )
    heads = roster.drop_duplicates("_group").set_index("_group")[keys]
    image_ids = heads["image_id"].loc[group[starts]].reset_index(drop=True)
    size_of = image_sizes(sizes, image_ids) if fuser.needs_sizes else [None] * len(starts)

    fused_groups, fused_classes, fused_xyxy, fused_scores = [], [], [], []
    for start, end, size in zip(starts, ends, size_of):
        box_xyxy, box_scores = fuser.fuse(
            BoxGroup(
                xyxy[start:end],
                scores[start:end],
                member[start:end],
                weights_of[group[start]],
                None if size is None else (float(size[0]), float(size[1])),
            )
        )
        fused_groups.append(np.full(len(box_scores), group[start]))
        fused_classes.append(np.full(len(box_scores), classes[start]))
        fused_xyxy.append(box_xyxy)
        fused_scores.append(box_scores)
    out_groups, out_classes = np.concatenate(fused_groups), np.concatenate(fused_classes)
    out_scores = np.concatenate(fused_scores)
    rank = np.lexsort((-out_scores, out_classes, out_groups))
    fused = heads.loc[out_groups[rank]].reset_index(drop=True)
    return fused.assign(
        **xyxy_columns(np.concatenate(fused_xyxy)[rank]),
        score=out_scores[rank],
        class_id=out_classes[rank],
    )


def _keys(boxes: pd.DataFrame, over: Sequence[str]) -> tuple[list[str], list[str]]:
    """(key columns kept, member columns); ConfigError on a bad `over`."""
    over = list(over)
    allowed = [c for c in KEY_COLUMNS[1:] if c in boxes.columns]
    if not over or any(c not in allowed for c in over) or len(set(over)) < len(over):
        raise ConfigError(f"fusion over {over}: name one or more distinct columns of {allowed}")
    keys = [c for c in KEY_COLUMNS if c in boxes.columns and c not in over]
    if boxes[keys + over].isna().any().any():
        raise EnsembleInputError(f"boxes have missing values in {keys + over}")
    return keys, over


def _roster(
    source: pd.DataFrame, keys: list[str], over: list[str], weights: Mapping[Hashable, float] | None
) -> pd.DataFrame:
    """One row per (group, member) sorted by both: keys, over, _group (index of the key
    tuple), _member (index within the group), _weight."""
    require_columns(source, keys + over, "members")
    roster = source[keys + over].drop_duplicates()
    roster["_group"] = roster.groupby(keys, sort=True).ngroup()
    roster = roster.sort_values(["_group", *over], kind="stable").reset_index(drop=True)
    roster["_member"] = roster.groupby("_group").cumcount()
    roster["_weight"] = _member_weights(roster[over], weights)
    return roster


def _member_weights(members: pd.DataFrame, weights: Mapping[Hashable, float] | None) -> np.ndarray:
    if weights is None:
        return np.ones(len(members))
    names = (
        members.iloc[:, 0].tolist()
        if members.shape[1] == 1
        else list(members.itertuples(index=False, name=None))
    )
    values = []
    for name in names:
        if name not in weights:
            raise ConfigError(f"weights: no weight for member {name!r}")
        # a zero weight gives NaN boxes in weighted means (PITFALLS)
        check_number(
            f"weights[{name!r}]", weights[name], 0.0, math.inf, low_open=True, high_open=True
        )
        values.append(float(weights[name]))
    return np.asarray(values)
