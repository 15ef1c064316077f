"""Box shrink (RSNA 1st place): the annotators drew boxes larger than the IoU-optimal
ones, so each final box keeps its centre and has its width and height scaled."""

from __future__ import annotations

import math

import pandas as pd

from cxrdet.ensemble.tables import check_number, require_columns

SHRINK_FACTOR = 0.875  # 1st place: width and height x 87.5% (area x 0.766)


def shrink_boxes(boxes: pd.DataFrame, factor: float = SHRINK_FACTOR) -> pd.DataFrame:
    """A copy of `boxes` (x, y, w, h columns) with w, h scaled by `factor` about each centre;
    a factor above 1 grows them."""
    check_number("shrink factor", factor, 0.0, math.inf, low_open=True, high_open=True)
    require_columns(boxes, ("x", "y", "w", "h"), "boxes")
    margin = (1.0 - factor) / 2.0
    return boxes.assign(
        x=boxes["x"] + boxes["w"] * margin,
        y=boxes["y"] + boxes["h"] * margin,
        w=boxes["w"] * factor,
        h=boxes["h"] * factor,
    )
