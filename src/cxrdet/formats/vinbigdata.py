"""VinBigData 2021: submission (image_id, PredictionString) with `14 1 0 0 1 1` for an image
without findings, train.csv as truth (boxes as prepared: one reader), mAP@0.4 with the
class-14 rule as its metric; the RSNA score does not fit its 14 classes + no finding."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cxrdet.data.sources.vinbigdata import NO_FINDING as NO_FINDING_NAME
from cxrdet.formats import OutputFormat, exact_number
from cxrdet.metrics.vinbigdata import NO_FINDING, NO_FINDING_XYWH, vinbigdata_score
from cxrdet.submission import read_vinbigdata_submission, write_vinbigdata_submission


def as_submitted(predictions: pd.DataFrame, image_ids: Sequence[str]) -> pd.DataFrame:
    """VinBigData predictions as a submission carries them: an image of `image_ids` without
    any box gets the no-finding box `14 1 0 0 1 1` (what write_vinbigdata_submission writes)."""
    empty = sorted(set(map(str, image_ids)) - set(predictions["image_id"].astype(str)))
    if not empty:
        return predictions
    x, y, w, h = NO_FINDING_XYWH
    added = pd.DataFrame(
        {"image_id": empty, "x": x, "y": y, "w": w, "h": h, "score": 1.0, "class_id": NO_FINDING}
    )
    return pd.concat(
        [predictions, added.astype({"class_id": predictions["class_id"].dtype})], ignore_index=True
    )


def truth_rows(
    truth: pd.DataFrame, image_ids: Sequence[str], class_names: Sequence[str]
) -> list[list[str]]:
    """train.csv: one row per box, the no-finding row for an image without (evaluate it with
    --no-fuse-readers: the boxes are prepare's, already fused)."""
    by_image = {image_id: group for image_id, group in truth.groupby("image_id")}
    rows = [["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]]
    for image_id in image_ids:
        boxes = by_image.get(image_id)
        if boxes is None:
            rows.append([image_id, NO_FINDING_NAME, str(NO_FINDING), "", "", "", "", ""])
        else:
            rows += [
                [
                    image_id,
                    class_names[b.class_id],
                    str(b.class_id),
                    "",
                    *map(exact_number, (b.x, b.y, b.x + b.w, b.y + b.h)),
                ]
                for b in boxes.itertuples()
            ]
    return rows


def map_score(truth: pd.DataFrame, predictions: pd.DataFrame, image_ids: Sequence[str]) -> float:
    return vinbigdata_score(truth, as_submitted(predictions, image_ids), image_ids=image_ids).score


FORMAT = OutputFormat(
    key="vinbigdata",
    sources=("vinbigdata",),
    objective="map",
    rsna_fits=False,
    string_layout="vinbigdata",
    evaluate_flags=" --no-fuse-readers",
    write_submission=lambda boxes, path, class_names, image_ids: write_vinbigdata_submission(
        boxes, path, image_ids=image_ids
    ),
    read_submission=lambda path, class_names: read_vinbigdata_submission(path).predictions,
    truth_rows=truth_rows,
    as_submitted=as_submitted,
    map_score=map_score,
)
