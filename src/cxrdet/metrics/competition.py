"""The competition metric of a prepared dataset's format, under one name per metric.

rsna: the RSNA score (`rsna_score`); vinbigdata: mAP@0.4 with the class-14 rule
(`map40`), an image without predictions scored as its submission row `14 1 0 0 1 1`;
any other format (folder, nih): VOC mAP@0.4 over its box classes (`map40`), what
`cxrdet evaluate --format folder` computes.

An objective (params' `tune_ensemble.objective`) picks another of these metrics on any
format: `map` (mAP@0.4 as the format scores it: on VinBigData with its class-14 rule) or
`rsna` (the RSNA score, class-agnostic: a box matches any truth box of its image); `auto`
is the format's own (rsna on RSNA data, map otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cxrdet.errors import ConfigError
from cxrdet.metrics.rsna import rsna_score
from cxrdet.metrics.vinbigdata import NO_FINDING, NO_FINDING_XYWH, mean_average_precision, vinbigdata_score

OBJECTIVE_METRICS = {"map": "map40", "rsna": "rsna_score"}  # objective -> the key it is reported under


def resolve_objective(fmt: str, objective: str = "auto") -> str:
    """The metric an objective means on `fmt`: "rsna" or "map" ("auto": rsna on RSNA data,
    map on any other format)."""
    if objective == "auto":
        return "rsna" if fmt == "rsna" else "map"
    if objective not in OBJECTIVE_METRICS:
        raise ConfigError(f"tune_ensemble.objective: {objective!r} is not one of auto, map, rsna")
    return objective


def metric_name(fmt: str, objective: str = "auto") -> str:
    """The key the metric is reported under: rsna_score or map40."""
    return OBJECTIVE_METRICS[resolve_objective(fmt, objective)]


def reported_objectives(fmt: str, objective: str = "auto") -> list[str]:
    """The objectives whose metrics evaluate reports (each under its metric_name), `objective`
    first: both on every format but VinBigData (14 classes plus the no-finding box, which the
    RSNA score does not fit), there the format's own and `objective`."""
    names = [resolve_objective(fmt, objective), resolve_objective(fmt)]
    if fmt != "vinbigdata":
        names += list(OBJECTIVE_METRICS)
    return list(dict.fromkeys(names))


def competition_score(
    fmt: str, truth: pd.DataFrame, predictions: pd.DataFrame, image_ids: Sequence[str], objective: str = "auto"
) -> float:
    """The metric of `objective` (default: the format's own) of `predictions` on the images
    `image_ids` (NaN: nothing to score). truth and predictions: image_id, x, y, w, h (+ score,
    class_id), pixels."""
    if resolve_objective(fmt, objective) == "rsna":
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
