"""The competition metric of a prepared dataset's format, under one name per metric.

rsna: the RSNA score (`rsna_score`); vinbigdata: mAP@0.4 with the class-14 rule
(`map40`), an image without predictions scored as its submission row `14 1 0 0 1 1`;
any other format (folder): VOC mAP@0.4 over its box classes (`map40`), what
`cxrdet evaluate --format folder` computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cxrdet.metrics.rsna import rsna_score
from cxrdet.metrics.vinbigdata import NO_FINDING, NO_FINDING_XYWH, mean_average_precision, vinbigdata_score


def metric_name(fmt: str) -> str:
    """The key the metric is reported under: rsna_score or map40."""
    return "rsna_score" if fmt == "rsna" else "map40"


def competition_score(
    fmt: str, truth: pd.DataFrame, predictions: pd.DataFrame, image_ids: Sequence[str]
) -> float:
    """The format's metric of `predictions` on the images `image_ids` (NaN: nothing to
    score). truth and predictions: image_id, x, y, w, h (+ score, class_id), pixels."""
    if fmt == "rsna":
        return rsna_score(truth, predictions).score
    if fmt == "vinbigdata":
        return vinbigdata_score(truth, as_submitted(predictions, image_ids), image_ids=image_ids).score
    return mean_average_precision(truth, predictions, image_ids=image_ids).score


def as_submitted(predictions: pd.DataFrame, image_ids: Sequence[str]) -> pd.DataFrame:
    """VinBigData predictions as a submission carries them: an image of `image_ids` without
    any box gets the no-finding box `14 1 0 0 1 1` (what write_vinbigdata_submission writes)."""
    empty = sorted(set(map(str, image_ids)) - set(predictions["image_id"].astype(str)))
    if not empty:
        return predictions
    x, y, w, h = NO_FINDING_XYWH
    added = pd.DataFrame({"image_id": empty, "x": x, "y": y, "w": w, "h": h, "score": 1.0, "class_id": NO_FINDING})
    return pd.concat([predictions, added.astype({"class_id": predictions["class_id"].dtype})], ignore_index=True)
