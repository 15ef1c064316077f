"""Read and write submission files: RSNA, VinBigData and the `folder` format.

Readers return prediction tables (image_id, x, y, w, h, score, class_id; pixels,
top-left corner) and the image ids the file lists. Every problem raises AnnotationError
naming the file and its 1-based line (header = line 1).
"""

from __future__ import annotations

import codecs
import csv
import math
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cxrdet.errors import AnnotationError
from cxrdet.io import atomic_path
from cxrdet.metrics.iou import frame_scores, frame_xyxy
from cxrdet.metrics.vinbigdata import NO_FINDING

PREDICTION_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "x": "float64",
    "y": "float64",
    "w": "float64",
    "h": "float64",
    "score": "float64",
    "class_id": "int64",
}
RSNA_HEADER = ("patientId", "PredictionString")
VINBIGDATA_HEADER = ("image_id", "PredictionString")
FOLDER_HEADER = ("image_id", "x", "y", "width", "height", "label", "score")
RSNA_CLASS_ID = 0  # RSNA has one box class, Lung Opacity
NO_FINDING_STRING = f"{NO_FINDING} 1 0 0 1 1"


class Submission(NamedTuple):
    predictions: pd.DataFrame
    image_ids: list[str]


# ---------------------------------------------------------------- reading


def read_rsna_submission(
    path: str | Path, *, truth_ids: Collection[str] | None = None
) -> Submission:
    """`patientId,PredictionString`, the string repeating `conf x y w h`."""

    def boxes(line: int, values: np.ndarray) -> np.ndarray:
        conf, x, y, w, h = values.T
        if ((w < 0) | (h < 0)).any():
            raise AnnotationError(path, line, "a box has negative width or height")
        return np.stack([x, y, w, h, conf, np.full_like(x, RSNA_CLASS_ID)], axis=1)

    frame, lines = _read_prediction_strings(path, RSNA_HEADER, "conf x y w h", boxes)
    _check_ids(path, lines, truth_ids)
    return Submission(frame, list(lines))


def read_vinbigdata_submission(
    path: str | Path, *, truth_ids: Collection[str] | None = None
) -> Submission:
    """`image_id,PredictionString`, the string repeating `class conf x_min y_min x_max
    y_max` (`14 1 0 0 1 1` for no finding)."""

    def boxes(line: int, values: np.ndarray) -> np.ndarray:
        cls, conf, x0, y0, x1, y1 = values.T
        bad = (cls != np.round(cls)) | (cls < 0) | (cls > NO_FINDING)
        if bad.any():
            raise AnnotationError(
                path, line, f"class {cls[bad][0]:g} is not an integer in 0..{NO_FINDING}"
            )
        if ((x1 < x0) | (y1 < y0)).any():
            raise AnnotationError(path, line, "a box has x_max < x_min or y_max < y_min")
        return np.stack([x0, y0, x1 - x0, y1 - y0, conf, cls], axis=1)

    frame, lines = _read_prediction_strings(
        path, VINBIGDATA_HEADER, "class conf x_min y_min x_max y_max", boxes
    )
    _check_ids(path, lines, truth_ids)
    return Submission(frame, list(lines))


def read_folder_submission(
    path: str | Path,
    class_names: Sequence[str],
    *,
    truth_ids: Collection[str] | None = None,
) -> Submission:
    """annotations.csv layout plus a score: `image_id,x,y,width,height,label,score`, one
    box per row; a row whose other fields are all empty lists an image with no boxes.
    `label` must be one of `class_names` (class_id = its index)."""
    class_id = {name: k for k, name in enumerate(class_names)}
    lines: dict[str, int] = {}  # image id -> its first line
    records = []
    for line, row in _csv_rows(path, FOLDER_HEADER):
        image_id = row["image_id"]
        if not image_id:
            raise AnnotationError(path, line, "empty image_id")
        lines.setdefault(image_id, line)
        if not any(row[c] for c in FOLDER_HEADER[1:]):
            continue
        numbers = [row[c] for c in ("x", "y", "width", "height", "score")]
        x, y, w, h, score = _numbers(path, line, numbers)
        if w < 0 or h < 0:
            raise AnnotationError(path, line, "negative width or height")
        if row["label"] not in class_id:
            raise AnnotationError(
                path, line, f"unknown label {row['label']!r}; expected one of {list(class_names)}"
            )
        records.append((image_id, x, y, w, h, score, class_id[row["label"]]))
    _check_ids(path, lines, truth_ids)
    frame = pd.DataFrame.from_records(records, columns=list(PREDICTION_COLUMNS))
    return Submission(frame.astype(PREDICTION_COLUMNS), list(lines))


def _read_prediction_strings(
    path: str | Path,
    header: tuple[str, str],
    layout: str,
    boxes: Callable[[int, np.ndarray], np.ndarray],
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The predictions and, for each image id, its line."""
    width = len(layout.split())
    lines: dict[str, int] = {}
    ids, arrays = [], []
    for line, row in _csv_rows(path, header):
        image_id = row[header[0]]
        if not image_id:
            raise AnnotationError(path, line, f"empty {header[0]}")
        if image_id in lines:
            raise AnnotationError(
                path, line, f"duplicate {header[0]} {image_id!r} (first on line {lines[image_id]})"
            )
        lines[image_id] = line
        tokens = row[header[1]].split()
        if len(tokens) % width:
            raise AnnotationError(
                path,
                line,
                f"PredictionString has {len(tokens)} tokens, not a multiple of {width} ({layout})",
            )
        values = np.array(_numbers(path, line, tokens), dtype=np.float64).reshape(-1, width)
        arrays.append(boxes(line, values))
        ids.extend([image_id] * len(values))
    stacked = np.concatenate(arrays) if arrays else np.zeros((0, 6))
    frame = pd.DataFrame(stacked, columns=list(PREDICTION_COLUMNS)[1:])
    frame.insert(0, "image_id", ids)
    return frame.astype(PREDICTION_COLUMNS), lines


def _csv_rows(path: str | Path, header: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for every non-blank data row; the header must hold `header`."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise AnnotationError(path, None, f"cannot open: {error.strerror}") from error
    with handle:
        reader = csv.reader(handle)
        try:
            yield from _checked_rows(path, reader, header)
        except UnicodeDecodeError:  # binary, Latin-1, ...: name the first bad line
            raise AnnotationError(
                path, _undecodable_line(path), "not UTF-8 text (a submission is a UTF-8 CSV)"
            ) from None
        except csv.Error as error:  # a NUL byte, a field over csv's size limit, ...
            raise AnnotationError(path, reader.line_num, f"not a valid CSV row: {error}") from None


def _checked_rows(
    path: Path, reader: Any, header: Sequence[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    """_csv_rows' rows of the csv.reader `reader` (its line_num names each row's line)."""
    columns = next(reader, None)
    if columns is None:
        raise AnnotationError(path, None, "empty file; expected a header line")
    missing = [c for c in header if c not in columns]
    if missing:
        raise AnnotationError(
            path, 1, f"header lacks columns {missing}; expected {','.join(header)}"
        )
    index = [columns.index(c) for c in header]
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(columns):
            raise AnnotationError(
                path, reader.line_num, f"{len(fields)} fields, the header has {len(columns)}"
            )
        yield reader.line_num, {c: fields[i].strip() for c, i in zip(header, index)}


def _undecodable_line(path: Path) -> int | None:
    """The 1-based line of a file's first byte that is not UTF-8 (read in chunks)."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                return line + chunk.count(b"\n", 0, max(error.start, 0))
            line += chunk.count(b"\n")
    return None


def _numbers(path: str | Path, line: int, tokens: Sequence[str]) -> list[float]:
    values = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise AnnotationError(path, line, f"non-numeric value {token!r}") from None
        if not math.isfinite(value):
            raise AnnotationError(path, line, f"value {token!r} is not finite")
        values.append(value)
    return values


def _check_ids(path: str | Path, lines: dict[str, int], truth_ids: Collection[str] | None) -> None:
    """Reject ids unknown to the truth; warn about truth images the file does not list
    (they count as images with no predictions). `lines` maps listed ids to lines."""
    if truth_ids is None:
        return
    truth = set(truth_ids)
    unknown = [i for i in lines if i not in truth]
    if unknown:
        raise AnnotationError(
            path, lines[unknown[0]], f"image id {unknown[0]!r} is not in the truth"
        )
    missing = len(truth - set(lines))
    if missing:
        warnings.warn(
            f"{path}: {missing} truth images are not in the submission; "
            "they count as images with no predictions",
            stacklevel=3,
        )


# ---------------------------------------------------------------- writing


def write_rsna_submission(
    predictions: pd.DataFrame, path: str | Path, *, image_ids: Sequence[str] | None = None
) -> Path:
    """One row per image of `image_ids` (default: the predicted images), boxes in
    descending confidence, an empty string for an image without boxes."""
    rows = prediction_strings(predictions, "rsna", image_ids=image_ids)
    return _write_rows(path, [list(RSNA_HEADER), *map(list, rows)])


def write_vinbigdata_submission(
    predictions: pd.DataFrame, path: str | Path, *, image_ids: Sequence[str] | None = None
) -> Path:
    """One row per image of `image_ids` (default: the predicted images); an image
    without boxes gets `14 1 0 0 1 1`."""
    rows = prediction_strings(predictions, "vinbigdata", image_ids=image_ids)
    return _write_rows(path, [list(VINBIGDATA_HEADER), *map(list, rows)])


def write_folder_submission(
    predictions: pd.DataFrame,
    path: str | Path,
    class_names: Sequence[str],
    *,
    image_ids: Sequence[str] | None = None,
) -> Path:
    """One row per box (label = class_names[class_id]); an image of `image_ids` without
    boxes gets a row with only its id."""
    frame = _checked(predictions)
    ids = _image_ids(frame, image_ids)
    rows = []
    for image_id, group in _by_image(frame, ids):
        if group is None:
            rows.append([image_id, "", "", "", "", "", ""])
            continue
        for x, y, w, h, score, cls in group:
            rows.append(
                [image_id, *map(_format, (x, y, w, h)), class_names[int(cls)], _format(score)]
            )
    return _write_rows(path, [list(FOLDER_HEADER), *rows])


def _rsna_values(row: np.ndarray) -> list[float]:
    x, y, w, h, conf, _ = row
    return [conf, x, y, w, h]


def _class_corner_values(row: np.ndarray) -> list[float]:
    x, y, w, h, conf, cls = row
    return [int(cls), conf, x, y, x + w, y + h]


# layout -> (one box's values, the string of an image without boxes)
_STRING_LAYOUTS: dict[str, tuple[Callable[[np.ndarray], list[float]], str]] = {
    "rsna": (_rsna_values, ""),
    "vinbigdata": (_class_corner_values, NO_FINDING_STRING),
    "classes": (_class_corner_values, ""),
}


def prediction_strings(
    predictions: pd.DataFrame, layout: str, *, image_ids: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """(image id, PredictionString) per image of `image_ids` (default: the predicted images),
    boxes in descending confidence, as the submission files carry them. layout: rsna
    (`conf x y w h`), vinbigdata (`class conf x_min y_min x_max y_max`, `14 1 0 0 1 1` for
    no box) or classes (the VinBigData box layout, an empty string for no box)."""
    box, empty = _STRING_LAYOUTS[layout]
    frame = _checked(predictions)
    return [
        (
            image_id,
            empty if group is None else " ".join(_format(v) for row in group for v in box(row)),
        )
        for image_id, group in _by_image(frame, _image_ids(frame, image_ids))
    ]


def _checked(predictions: pd.DataFrame) -> pd.DataFrame:
    frame_xyxy(predictions, "predictions")
    frame_scores(predictions, "predictions")
    if "class_id" not in predictions.columns:
        raise ValueError("predictions lack a class_id column")
    return predictions


def _image_ids(frame: pd.DataFrame, image_ids: Sequence[str] | None) -> list[str]:
    predicted = frame["image_id"].astype(str)
    if image_ids is None:
        return sorted(predicted.unique())
    extra = set(predicted) - set(map(str, image_ids))
    if extra:
        raise ValueError(f"{len(extra)} predicted images are not in image_ids, e.g. {min(extra)!r}")
    return [str(i) for i in image_ids]


def _by_image(frame: pd.DataFrame, ids: list[str]) -> Iterator[tuple[str, np.ndarray | None]]:
    """(image id, its boxes as rows x, y, w, h, score, class_id by descending score)."""
    ordered = frame.assign(image_id=frame["image_id"].astype(str)).sort_values(
        ["image_id", "score"], ascending=[True, False], kind="stable"
    )
    values = ordered[["x", "y", "w", "h", "score", "class_id"]].to_numpy(dtype=np.float64)
    unique, start, count = np.unique(
        ordered["image_id"].to_numpy(dtype=str), return_index=True, return_counts=True
    )
    spans = {i: slice(s, s + c) for i, s, c in zip(unique.tolist(), start, count)}
    for image_id in ids:
        span = spans.get(image_id)
        yield image_id, None if span is None else values[span]


def _format(value: float) -> str:
    """Shortest text that reads back to the same float, without a trailing `.0`."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _write_rows(path: str | Path, rows: list[list[str]]) -> Path:
    with atomic_path(path) as partial, partial.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return Path(path)
