"""RSNA Pneumonia 2018: stage_2 submission (patientId, PredictionString), its train-label CSV
as truth, the RSNA score as its metric."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cxrdet.formats import OutputFormat, exact_number
from cxrdet.metrics.vinbigdata import mean_average_precision
from cxrdet.submission import read_rsna_submission, write_rsna_submission


def truth_rows(
    truth: pd.DataFrame, image_ids: Sequence[str], class_names: Sequence[str]
) -> list[list[str]]:
    """stage_2_train_labels.csv: one row per box, Target 0 and no box for an image without."""
    by_image = {image_id: group for image_id, group in truth.groupby("image_id")}
    rows = [["patientId", "x", "y", "width", "height", "Target"]]
    for image_id in image_ids:
        boxes = by_image.get(image_id)
        if boxes is None:
            rows.append([image_id, "", "", "", "", "0"])
        else:
            rows += [
                [image_id, *map(exact_number, (b.x, b.y, b.w, b.h)), "1"]
                for b in boxes.itertuples()
            ]
    return rows


FORMAT = OutputFormat(
    key="rsna",
    sources=("rsna",),
    objective="rsna",
    rsna_fits=True,
    string_layout="rsna",
    evaluate_flags="",
    write_submission=lambda boxes, path, class_names, image_ids: write_rsna_submission(
        boxes, path, image_ids=image_ids
    ),
    read_submission=lambda path, class_names: read_rsna_submission(path).predictions,
    truth_rows=truth_rows,
    as_submitted=lambda predictions, image_ids: predictions,
    map_score=lambda truth, predictions, image_ids: (
        mean_average_precision(truth, predictions, image_ids=image_ids).score
    ),
)
