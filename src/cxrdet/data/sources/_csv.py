"""Helpers shared by the sources: reading annotation CSVs, validating their rows, targets.

Cells are read as stripped strings, so a check can tell an empty cell from a bad one,
and each row keeps its 1-based line number in the file (header = line 1) in `LINE`.
Checks are vectorised masks; Python loops only build the messages of bad rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxrdet.errors import AnnotationError

OnBadRows = Literal["raise", "drop"]
ON_BAD_ROWS: tuple[str, ...] = ("raise", "drop")
LINE = "_line"
# Boxes may overhang the image by this much (rounding in annotation tools); they are clipped.
EDGE_TOLERANCE_PX = 1.0
ABNORMAL = "Abnormal"  # the last target column: any finding
BINARY_LABELS = ["normal", "abnormal"]  # image labels of the formats without image classes

Problem = str | Callable[[pd.Series], str]


def check_on_bad_rows(on_bad_rows: str) -> None:
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a CSV as stripped strings ('' when empty) plus LINE; blank lines are skipped.

    A missing file, a missing column or a row with too many fields is a file-level
    AnnotationError (never dropped: the file's layout itself is wrong).
    """
    if not path.is_file():
        raise AnnotationError(path, None, "file not found")
    try:
        table = pd.read_csv(
            path,
            dtype=object,  # Python strings: pandas' Arrow-backed str is ~50x slower in isin
            keep_default_na=False,
            skip_blank_lines=False,  # keep blank lines so that row index -> line stays exact
            index_col=False,
            encoding="utf-8-sig",
        )
    except pd.errors.ParserError as error:
        line = re.search(r"line (\d+)", str(error))
        raise AnnotationError(
            path, int(line.group(1)) if line else None, f"malformed CSV: {error}"
        ) from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise AnnotationError(path, None, f"not a readable CSV file: {error}") from None
    table.columns = [str(name).strip() for name in table.columns]
    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise AnnotationError(
            path, None, f"missing column(s) {missing}; the header has {list(table.columns)}"
        )
    table = table.apply(lambda column: column.str.strip())
    table[LINE] = np.arange(2, len(table) + 2)
    blank = (table.drop(columns=LINE) == "").all(axis=1)
    return table[~blank].reset_index(drop=True)


class RowFilter:
    """Applies the on_bad_rows policy to the rows of one file.

    `remove` raises AnnotationError for the first bad row under "raise"; under "drop" it
    records (file, line, problem) for every bad row in `dropped` and returns the rest.
    """

    def __init__(self, path: Path, on_bad_rows: str, dropped: list[tuple[str, int | None, str]]):
        check_on_bad_rows(on_bad_rows)
        self.path = path
        self.on_bad_rows = on_bad_rows
        self.dropped = dropped

    def remove(
        self, table: pd.DataFrame, bad: pd.Series | np.ndarray, problem: Problem
    ) -> pd.DataFrame:
        bad = np.asarray(bad, dtype=bool)
        if not bad.any():
            return table
        offenders = table[bad].sort_values(LINE)
        describe = problem if callable(problem) else (lambda _row: problem)
        if self.on_bad_rows == "raise":
            first = offenders.iloc[0]
            raise AnnotationError(self.path, int(first[LINE]), describe(first))
        for _, row in offenders.iterrows():
            self.dropped.append((str(self.path), int(row[LINE]), describe(row)))
        return table[~bad]

    def require(self, table: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
        """Rows with an empty cell in any of `columns` are bad."""
        for column in columns:
            table = self.remove(table, table[column] == "", f"missing {column}")
        return table

    def numbers(self, table: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
        """Convert `columns` to float64; an empty, non-numeric, NaN or infinite cell is bad."""
        for column in columns:
            values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
            table = self.remove(
                table, ~np.isfinite(values), lambda row, c=column: _number_problem(row, c)
            )
            table = table.assign(**{column: pd.to_numeric(table[column]).astype("float64")})
        return table

    def allowed(
        self, table: pd.DataFrame, column: str, allowed: Iterable[str], what: str
    ) -> pd.DataFrame:
        """Rows whose `column` is not one of `allowed` are bad."""
        allowed = list(allowed)
        shown = ", ".join(map(repr, allowed))
        return self.remove(
            table,
            ~table[column].isin(allowed),
            lambda row: f"unknown {what} {row[column]!r} (allowed: {shown})",
        )

    def known_ids(
        self, table: pd.DataFrame, column: str, known: Iterable[str], where: str
    ) -> pd.DataFrame:
        """Rows naming an image (or patient) that is not in `where` are bad."""
        return self.remove(
            table,
            ~table[column].isin(set(known)),
            lambda row: f"unknown image id {row[column]!r}: not in {where}",
        )

    def unique(self, table: pd.DataFrame, column: str) -> pd.DataFrame:
        """A repeated value of `column` is bad (the first occurrence is kept)."""
        first_line = table.drop_duplicates(column).set_index(column)[LINE]
        return self.remove(
            table,
            table.duplicated(column),
            lambda row: (
                f"duplicate {column} {row[column]!r} (first on line {first_line[row[column]]})"
            ),
        )

    def positive_size(
        self, table: pd.DataFrame, width_name: str = "width", height_name: str = "height"
    ) -> pd.DataFrame:
        """Boxes (columns w, h) with zero or negative width or height are bad."""
        table = self.remove(
            table, table["w"] <= 0, lambda row: f"{width_name} must be > 0, got {row['w']:g}"
        )
        return self.remove(
            table, table["h"] <= 0, lambda row: f"{height_name} must be > 0, got {row['h']:g}"
        )

    def inside_images(self, table: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
        """Keep boxes (x, y, w, h) inside their image, clipping up to EDGE_TOLERANCE_PX overhang.

        `sizes` is indexed by image_id with columns width and height; every box's image
        must be in it. A box reaching further outside, or with no area left once clipped,
        is bad.
        """
        x, w, x_outside = _fit_span(table["x"], table["w"], table["image_id"].map(sizes["width"]))
        y, h, y_outside = _fit_span(table["y"], table["h"], table["image_id"].map(sizes["height"]))

        def describe(row: pd.Series) -> str:
            box = table.loc[row.name]  # the box as written, before clipping
            size = sizes.loc[box["image_id"]]
            return (
                f"box x={box['x']:g} y={box['y']:g} w={box['w']:g} h={box['h']:g} lies outside "
                f"the {size['width']}x{size['height']} image {box['image_id']!r} (more than "
                f"{EDGE_TOLERANCE_PX:g} px over an edge, or no area inside it)"
            )

        clipped = table.assign(x=x, y=y, w=w, h=h)
        return self.remove(clipped, x_outside | y_outside, describe)


def _fit_span(
    start: pd.Series, length: pd.Series, limit: pd.Series
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip [start, start + length] to [0, limit]; also whether it was out by more than the
    tolerance or has nothing left inside. Spans already inside keep their exact values."""
    start, length = start.to_numpy(dtype=float), length.to_numpy(dtype=float)
    limit = limit.to_numpy(dtype=float)
    end = start + length
    clipped_start, clipped_end = np.clip(start, 0, limit), np.clip(end, 0, limit)
    needs_clip = (start < 0) | (end > limit)
    outside = (
        (start < -EDGE_TOLERANCE_PX)
        | (end > limit + EDGE_TOLERANCE_PX)
        | (clipped_end <= clipped_start)
    )
    return clipped_start, np.where(needs_clip, clipped_end - clipped_start, length), outside


def _number_problem(row: pd.Series, column: str) -> str:
    text = row[column]
    return f"missing {column}" if text == "" else f"{column} is not a finite number: {text!r}"


def box_targets(
    images: pd.DataFrame, boxes: pd.DataFrame, class_names: Sequence[str]
) -> pd.DataFrame:
    """Multi-label targets aligned with `images`: a 0/1 column per box class (the image has
    a box of it) and ABNORMAL (any box), like NIH's 14 findings + abnormal."""
    matrix = np.zeros((len(images), len(class_names)), dtype=np.int64)
    row = pd.Index(images["image_id"]).get_indexer(boxes["image_id"])
    known = row >= 0
    matrix[row[known], boxes["class_id"].to_numpy()[known]] = 1
    targets = pd.DataFrame(matrix, columns=list(class_names))
    targets[ABNORMAL] = matrix.any(axis=1).astype(np.int64)
    return targets


def sized_images(
    image_ids: Sequence[str], paths: Sequence[str], sizes: dict[str, tuple[int, int]]
) -> pd.DataFrame:
    """image_id, path, width, height of the images whose size was read, in the given order."""
    kept = [(i, path, *sizes[i]) for i, path in zip(image_ids, paths) if i in sizes]
    return pd.DataFrame(kept, columns=["image_id", "path", "width", "height"])
