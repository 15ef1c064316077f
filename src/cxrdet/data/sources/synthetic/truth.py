"""The ground-truth box rows and tables that a correct parser must read back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from cxrdet.data.tables import conform_boxes, empty_boxes


def box_row(
    image_id: str, box: Sequence[float], class_id: int, class_name: str, reader: str | None = None
) -> dict[str, Any]:
    x, y, w, h = (float(v) for v in box)
    return dict(
        image_id=image_id,
        x=x,
        y=y,
        w=w,
        h=h,
        class_id=class_id,
        class_name=class_name,
        reader=reader,
    )


def boxes_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return conform_boxes(pd.DataFrame(rows)) if rows else empty_boxes()
