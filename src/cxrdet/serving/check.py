"""Does a model's output equal a submission file on the same images? (The register stage
checks the logged model against the evaluate stage's holdout submission before it
registers a version; the tests check the server against the in-process model.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.formats import output_format
from cxrdet.serving.inputs import ID

COLUMNS = ["image_id", "x", "y", "w", "h", "score", "class_id"]
# Batches of other sizes change float sums in the last bits: allow that, nothing more.
PIXEL_ATOL, SCORE_ATOL = 1e-2, 1e-4


def output_boxes(output: pd.DataFrame) -> pd.DataFrame:
    """The model output's `boxes` as one table (COLUMNS)."""
    rows = [
        (row[ID], *(box[k] for k in COLUMNS[1:]))
        for row in output.to_dict("records")
        for box in row["boxes"]
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def submission_boxes(
    path: Path, fmt: str, class_names: Sequence[str], image_ids: Sequence[str]
) -> pd.DataFrame:
    """The boxes a submission file gives the images `image_ids` (COLUMNS)."""
    boxes = output_format(fmt).read_submission(path, class_names)
    return boxes[boxes["image_id"].astype(str).isin(list(image_ids))][COLUMNS]


def comparable(boxes: pd.DataFrame, fmt: str, image_ids: Sequence[str]) -> pd.DataFrame:
    """As the format's submission carries them (VinBigData: the no-finding box where none)."""
    return output_format(fmt).as_submitted(boxes, image_ids)


def box_difference(found: pd.DataFrame, expected: pd.DataFrame) -> str | None:
    """None when both tables hold the same boxes per image (within float noise), else what
    differs."""
    key = ["image_id", "score", "x", "y"]
    a, b = (
        t.assign(image_id=t["image_id"].astype(str))
        .sort_values(key, ascending=[True, False, True, True])
        .reset_index(drop=True)
        for t in (found, expected)
    )
    counts = a.groupby("image_id").size().sub(b.groupby("image_id").size(), fill_value=0)
    if (counts != 0).any():
        image_id = counts[counts != 0].index[0]
        return (
            f"image {image_id!r}: {int((a['image_id'] == image_id).sum())} boxes, "
            f"expected {int((b['image_id'] == image_id).sum())}"
        )
    pixels = np.abs(
        a[["x", "y", "w", "h"]].to_numpy(float) - b[["x", "y", "w", "h"]].to_numpy(float)
    ).max(initial=0.0)
    scores = np.abs(a["score"].to_numpy(float) - b["score"].to_numpy(float)).max(initial=0.0)
    if (
        pixels > PIXEL_ATOL
        or scores > SCORE_ATOL
        or (a["class_id"].to_numpy() != b["class_id"].to_numpy()).any()
    ):
        return f"boxes differ by up to {pixels:.4g} px and {scores:.4g} in score (or in class)"
    return None
