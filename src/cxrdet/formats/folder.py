"""Your own data (a folder of images + annotations.csv; also NIH's boxes): one row per box
(image_id, x, y, width, height, label, score), annotations.csv as truth, VOC mAP@0.4 over
its box classes as its metric."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cxrdet.formats import OutputFormat, exact_number
from cxrdet.metrics.vinbigdata import mean_average_precision
from cxrdet.submission import read_folder_submission, write_folder_submission


def truth_rows(
    truth: pd.DataFrame, image_ids: Sequence[str], class_names: Sequence[str]
) -> list[list[str]]:
    """annotations.csv (images without boxes are not listed; they do not change mAP)."""
    rows = [["image_id", "x", "y", "width", "height", "label"]]
    rows += [
        [b.image_id, *map(exact_number, (b.x, b.y, b.w, b.h)), class_names[b.class_id]]
        for b in truth.itertuples()
        if b.image_id in set(image_ids)
    ]
    return rows


FORMAT = OutputFormat(
    key="folder",
    sources=("folder", "nih"),
    objective="map",
    rsna_fits=True,
    string_layout="classes",
    evaluate_flags="",
    write_submission=lambda boxes, path, class_names, image_ids: write_folder_submission(
        boxes, path, class_names, image_ids=image_ids
    ),
    read_submission=lambda path, class_names: read_folder_submission(path, class_names).predictions,
    truth_rows=truth_rows,
    as_submitted=lambda predictions, image_ids: predictions,
    map_score=lambda truth, predictions, image_ids: (
        mean_average_precision(truth, predictions, image_ids=image_ids).score
    ),
)
