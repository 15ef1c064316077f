"""Checked box tables, image sizes and method parameters shared by the ensemble steps.

Box tables follow the per-view prediction contract (cxrdet.infer.detector_tta): key
columns (image_id and any of fold, model, view), x, y, w, h (top-left corner and size,
original image pixels), score in [0, 1] and class_id. Their geometry is cxrdet.metrics.iou's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from cxrdet.errors import ConfigError, CxrdetError

KEY_COLUMNS = ("image_id", "fold", "model", "view")
VALUE_COLUMNS = ("x", "y", "w", "h", "score", "class_id")

Params = TypeVar("Params")


class EnsembleInputError(CxrdetError, ValueError):
    """A prediction table lacks a column or holds a bad value, or an image has no size."""


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...] | list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EnsembleInputError(f"{what} lacks columns {missing}")


def checked_boxes(boxes: pd.DataFrame, what: str = "boxes") -> pd.DataFrame:
    """`boxes` itself after checking: columns present, finite coordinates, w and h >= 0,
    scores in [0, 1], integral class ids."""
    require_columns(boxes, ("image_id", *VALUE_COLUMNS), what)
    xywh = boxes[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xywh).all():
        raise EnsembleInputError(f"{what} has NaN or infinite box coordinates")
    if (xywh[:, 2:] < 0).any():
        raise EnsembleInputError(f"{what} has boxes with negative width or height")
    scores = boxes["score"].to_numpy(dtype=np.float64)
    if not ((scores >= 0) & (scores <= 1)).all():  # NaN fails too
        raise EnsembleInputError(f"{what} has scores outside [0, 1] (or NaN)")
    if not pd.api.types.is_integer_dtype(boxes["class_id"]):
        raise EnsembleInputError(
            f"{what}: class_id must be integers, got {boxes['class_id'].dtype}"
        )
    return boxes


def image_sizes(
    sizes: pd.DataFrame | Mapping[str, tuple[float, float]], image_ids: pd.Series
) -> np.ndarray:
    """(n, 2) width, height of each id in `image_ids`. `sizes`: a table with image_id,
    width and height columns (the prepared images table) or {image_id: (width, height)}."""
    if isinstance(sizes, pd.DataFrame):
        require_columns(sizes, ("image_id", "width", "height"), "sizes")
        if sizes["image_id"].duplicated().any():
            raise EnsembleInputError("sizes list an image_id more than once")
        table = sizes.set_index("image_id")[["width", "height"]]
    else:
        table = pd.DataFrame.from_dict(dict(sizes), orient="index", columns=["width", "height"])
    found = table.reindex(pd.Index(image_ids.unique()))
    unknown = found.index[found.isna().any(axis=1)]
    if len(unknown):
        raise EnsembleInputError(f"sizes lack {len(unknown)} images, e.g. {unknown[0]!r}")
    values = found.to_numpy(dtype=np.float64)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise EnsembleInputError("sizes have a width or height that is not a positive number")
    return found.loc[image_ids.to_numpy()].to_numpy(dtype=np.float64)


def make_registered(
    registry: Mapping[str, type[Params]], name: str, params: Mapping[str, Any], kind: str
) -> Params:
    """The parameters of the `kind` (fusion method, gating rule) called `name` in `registry`;
    ConfigError on an unknown name, parameter or value."""
    if name not in registry:
        raise ConfigError(f"{kind} {name!r} is unknown; expected one of {sorted(registry)}")
    return make_params(registry[name], params, f"{kind} {name!r}")


def make_params(cls: type[Params], params: Mapping[str, Any], key: str) -> Params:
    """`cls(**params)`; an unknown name or a bad value is a ConfigError starting with `key`."""
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"{key}: unknown parameter {unknown[0]!r}; expected one of {known}")
    try:
        return cls(**params)
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None


def check_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """ConfigError naming `name` unless `value` is a real number in the interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
