"""Classifier gating: image-level probabilities rescore boxes and decide which survive.

`probs` is a table indexed by image_id, one column per probability (see
views.mean_probabilities); each rule names the columns it reads. The 1st place's
order of steps: product gate (0.2) per model, fuse the models, shrink, then
`drop_below(boxes, 0.275)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from cxrdet.ensemble.tables import (
    EnsembleInputError,
    check_number,
    checked_boxes,
    make_registered,
)
from cxrdet.errors import ConfigError

NOT_NORMAL_COLUMN = "p_No Lung Opacity / Not Normal"  # the RSNA image class's p_<name> column


class Gate(Protocol):
    def apply(self, boxes: pd.DataFrame, probs: pd.DataFrame | None) -> pd.DataFrame: ...


@dataclass(frozen=True)
class NoGate:
    """Boxes as they are."""

    def apply(self, boxes: pd.DataFrame, probs: pd.DataFrame | None) -> pd.DataFrame:
        return boxes


@dataclass(frozen=True)
class ProductGate:
    """RSNA 1st place: score := detection score x classifier P(opacity); keep score >= threshold."""

    threshold: float = 0.2
    column: str = "opacity"

    def __post_init__(self) -> None:
        check_number("threshold", self.threshold, 0.0, 1.0)

    def apply(self, boxes: pd.DataFrame, probs: pd.DataFrame | None) -> pd.DataFrame:
        scored = boxes.assign(score=boxes["score"].to_numpy() * _per_box(probs, self.column, boxes))
        return scored[scored["score"] >= self.threshold].reset_index(drop=True)


@dataclass(frozen=True)
class SqrtGate:
    """RSNA 2nd place: score := sqrt(score x (P(opacity) + not_normal_weight x P(not normal)));
    keep score > threshold. (It kept sqrt(...) x 5 > 0.3, the same test as sqrt(...) > 0.06.)"""

    not_normal_weight: float = 0.1
    threshold: float = 0.3 / 5
    opacity: str = "opacity"
    not_normal: str = NOT_NORMAL_COLUMN

    def __post_init__(self) -> None:
        check_number("not_normal_weight", self.not_normal_weight, 0.0, 1.0)  # score stays <= 1
        check_number("threshold", self.threshold, 0.0, 1.0)

    def apply(self, boxes: pd.DataFrame, probs: pd.DataFrame | None) -> pd.DataFrame:
        image_score = _per_box(probs, self.opacity, boxes) + self.not_normal_weight * _per_box(
            probs, self.not_normal, boxes
        )
        # P(opacity) and P(not normal) may come from different classifiers: their sum can pass 1
        score = np.sqrt(boxes["score"].to_numpy() * np.minimum(image_score, 1.0))
        scored = boxes.assign(score=score)
        return scored[scored["score"] > self.threshold].reset_index(drop=True)


@dataclass(frozen=True)
class NoFindingFilter:
    """VinBigData 2-class filter (public baseline, 0.154 -> 0.201): where P(abnormal) < low
    an image's boxes are replaced by one "no finding" box `0 0 1 1` of score 1; where it is
    < high that box is added with score 1 - P(abnormal) (the 2nd place's score)."""

    low: float = 0.08
    high: float = 0.95
    column: str = "opacity"  # P(abnormal)
    no_finding_class: int = 14

    def __post_init__(self) -> None:
        check_number("low", self.low, 0.0, 1.0)
        check_number("high", self.high, self.low, 1.0)
        if isinstance(self.no_finding_class, bool) or not isinstance(self.no_finding_class, int):
            raise ConfigError(f"no_finding_class must be an integer, got {self.no_finding_class!r}")

    def apply(self, boxes: pd.DataFrame, probs: pd.DataFrame | None) -> pd.DataFrame:
        _per_box(probs, self.column, boxes)  # every boxed image has a probability
        abnormal = _column(probs, self.column)
        normal = abnormal.index[abnormal < self.low]
        unsure = abnormal[(abnormal >= self.low) & (abnormal < self.high)]
        added = pd.DataFrame(
            {
                "image_id": [*normal, *unsure.index],
                "x": 0.0,
                "y": 0.0,
                "w": 1.0,
                "h": 1.0,
                "score": np.r_[np.ones(len(normal)), 1.0 - unsure.to_numpy()],
                "class_id": np.int64(self.no_finding_class),
            }
        )
        kept = boxes[~boxes["image_id"].isin(normal)]
        return (
            pd.concat([kept, added], ignore_index=True)
            if len(added)
            else kept.reset_index(drop=True)
        )


GATES: dict[str, type] = {
    "none": NoGate,
    "product": ProductGate,
    "sqrt": SqrtGate,
    "no_finding": NoFindingFilter,
}


def make_gate(rule: str, **params: Any) -> Gate:
    """The parameters of `rule`; ConfigError on an unknown rule, name or value."""
    return make_registered(GATES, rule, params, "gating rule")


def gate_boxes(
    boxes: pd.DataFrame,
    probs: pd.DataFrame | pd.Series | None,
    rule: str = "none",
    **params: Any,
) -> pd.DataFrame:
    """`boxes` rescored and filtered by `rule` with its `params` (see GATES). `probs`:
    per-image probabilities indexed by image_id (a Series counts as one column, its name)."""
    gate = make_gate(rule, **params)
    checked_boxes(boxes)
    if isinstance(probs, pd.Series):
        probs = probs.to_frame()
    return gate.apply(boxes, probs)


def drop_below(boxes: pd.DataFrame, min_score: float) -> pd.DataFrame:
    """Boxes scoring at least `min_score` (1st place's final cut: 0.275)."""
    check_number("min_score", min_score, 0.0, 1.0)
    return boxes[boxes["score"] >= min_score].reset_index(drop=True)


def _column(probs: pd.DataFrame | None, name: str) -> pd.Series:
    """Column `name` of `probs`, checked: unique image ids, values in [0, 1]."""
    if probs is None:
        raise EnsembleInputError(f"gating needs image probabilities (column {name!r})")
    if name not in probs.columns:
        raise EnsembleInputError(
            f"image probabilities lack column {name!r}; have {list(probs.columns)}"
        )
    if probs.index.has_duplicates:
        raise EnsembleInputError("image probabilities list an image_id more than once")
    column = probs[name].astype(np.float64)
    if not ((column >= 0) & (column <= 1)).all():
        raise EnsembleInputError(
            f"image probabilities {name!r} have values outside [0, 1] (or NaN)"
        )
    return column


def _per_box(probs: pd.DataFrame | None, name: str, boxes: pd.DataFrame) -> np.ndarray:
    """Column `name` for each box's image; EnsembleInputError when an image has none."""
    values = _column(probs, name).reindex(boxes["image_id"].to_numpy()).to_numpy()
    if np.isnan(values).any():
        missing = boxes["image_id"].to_numpy()[np.isnan(values)]
        raise EnsembleInputError(
            f"image probabilities {name!r} lack {len(set(missing))} boxed image(s), "
            f"e.g. {missing[0]!r}"
        )
    return values
