"""Competition formats on the output side, one record each: the submission writer and reader,
the truth file `cxrdet evaluate` reads, the competition metric and its headline name. The
input side is cxrdet.data.sources (SOURCES: one reader per on-disk format).

A format is a module of this package that defines `FORMAT`, an `OutputFormat` serving the
params' data.<name>.format values in its `sources`; nothing else in the project names a
format, so another one is one new module here plus its source (cxrdet.data.sources).

Metrics by objective (params' `tune_ensemble.objective`): `map` (mAP@0.4 as the format
scores it: on VinBigData with its class-14 rule) or `rsna` (the RSNA score, class-agnostic:
a box matches any truth box of its image); `auto` is the format's own.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrdet.errors import ConfigError
from cxrdet.metrics.rsna import rsna_score

OBJECTIVE_METRICS = {
    "map": "map40",
    "rsna": "rsna_score",
}  # objective -> the key it is reported under


@dataclass(frozen=True)
class OutputFormat:
    key: str  # its `cxrdet evaluate --format` name
    sources: tuple[str, ...]  # the prepared datasets' formats it writes and scores
    objective: str  # its own metric ("auto"): rsna | map
    rsna_fits: bool  # the RSNA score means something on its classes (evaluate reports both metrics)
    string_layout: str  # its PredictionString layout (cxrdet.submission.prediction_strings)
    evaluate_flags: str  # `cxrdet evaluate` options for the truth file evaluate writes
    # (boxes, path, class names, image ids): one row per image of image_ids
    write_submission: Callable[[pd.DataFrame, Path, Sequence[str], Sequence[str]], Path]
    read_submission: Callable[[Path, Sequence[str]], pd.DataFrame]  # (path, class names) -> boxes
    # (truth boxes, image ids, class names) -> the rows of its train-label CSV, header first
    truth_rows: Callable[[pd.DataFrame, Sequence[str], Sequence[str]], list[list[str]]]
    # (predictions, image ids) -> as its submission carries them
    as_submitted: Callable[[pd.DataFrame, Sequence[str]], pd.DataFrame]
    # (truth, predictions, image ids) -> its mAP@0.4 (NaN: nothing to score)
    map_score: Callable[[pd.DataFrame, pd.DataFrame, Sequence[str]], float]


@functools.cache
def registered() -> dict[str, OutputFormat]:
    """Every format module of this package, by the source format it serves."""
    found: dict[str, OutputFormat] = {}
    for info in pkgutil.iter_modules(__path__):
        record = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FORMAT", None)
        if isinstance(record, OutputFormat):
            found |= {source: record for source in record.sources}
    return found


def output_format(fmt: str) -> OutputFormat:
    """The output format of a prepared dataset's format."""
    formats = registered()
    if fmt not in formats:
        raise ConfigError(f"data.detect.format: no output format for {fmt!r} ({sorted(formats)})")
    return formats[fmt]


def resolve_objective(fmt: str, objective: str = "auto") -> str:
    """The metric an objective means on `fmt`: "rsna" or "map" ("auto": the format's own)."""
    if objective == "auto":
        return output_format(fmt).objective
    if objective not in OBJECTIVE_METRICS:
        raise ConfigError(f"tune_ensemble.objective: {objective!r} is not one of auto, map, rsna")
    return objective


def metric_name(fmt: str, objective: str = "auto") -> str:
    """The key the metric is reported under: rsna_score or map40."""
    return OBJECTIVE_METRICS[resolve_objective(fmt, objective)]


def reported_objectives(fmt: str, objective: str = "auto") -> list[str]:
    """The objectives whose metrics evaluate reports (each under its metric_name), `objective`
    first: both where the RSNA score fits the format's classes, else the format's own and
    `objective`."""
    names = [resolve_objective(fmt, objective), resolve_objective(fmt)]
    if output_format(fmt).rsna_fits:
        names += list(OBJECTIVE_METRICS)
    return list(dict.fromkeys(names))


def competition_score(
    fmt: str,
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    image_ids: Sequence[str],
    objective: str = "auto",
) -> float:
    """The metric of `objective` (default: the format's own) of `predictions` on the images
    `image_ids` (NaN: nothing to score). truth and predictions: image_id, x, y, w, h (+ score,
    class_id), pixels."""
    if resolve_objective(fmt, objective) == "rsna":
        return rsna_score(truth, predictions).score
    return output_format(fmt).map_score(truth, predictions, image_ids)


def exact_number(value: float) -> str:
    """The shortest text that reads back to the same float."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
