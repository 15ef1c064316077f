"""The pyfunc model's input table -> image files the predictor reads.

One row per image: `image_id` and either `image` (base64 of the bytes of a DICOM, PNG or
JPEG file) or `path` (a file below the server's path root, cxrdet.serving.path_root; off
unless the operator sets one). Decoded bytes are written to a
work folder under a suffix sniffed from their first bytes, so they go through exactly the
reader `prepare` and `cxrdet predict` use (cxrdet.data.images.read_image). Every problem
raises ModelInputError naming the row, its image id and the column.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from cxrdet.data.images import read_image
from cxrdet.errors import CxrdetError, ImageReadError
from cxrdet.serving.path_root import DISABLED, REFUSED, confined_file

ID, IMAGE, PATH = "image_id", "image", "path"
PNG_MAGIC, JPEG_MAGIC, DICOM_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"DICM"
DICOM_PREAMBLE = 128  # DICOM Part 10 files: 128 bytes of preamble, then "DICM"


class ModelInputError(CxrdetError):
    """The model's input table has a missing column, an empty or duplicate id, or a row
    whose image cannot be decoded."""


@dataclass(frozen=True)
class ImageFiles:
    image_ids: list[str]
    paths: list[Path]
    rows: dict[Path, str]  # file -> "row k (image_id '...'), column ...", for error messages

    def explain(self, error: ImageReadError) -> ModelInputError:
        """The reader's error, naming the row instead of a work-folder file."""
        where = self.rows.get(error.path, str(error.path))
        return ModelInputError(f"{where}: {error.reason}")


def image_suffix(data: bytes) -> str | None:
    """The file suffix of DICOM, PNG or JPEG bytes; None for anything else."""
    if data[DICOM_PREAMBLE : DICOM_PREAMBLE + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return ".dcm"
    if data.startswith(PNG_MAGIC):
        return ".png"
    if data.startswith(JPEG_MAGIC):
        return ".jpg"
    return None


def image_files(frame: pd.DataFrame, workdir: Path, path_root: Path | None = None) -> ImageFiles:
    """The rows of `frame` as files: decoded `image` bytes are written under `workdir`;
    `path` values must name regular files below `path_root` (None: no `path` allowed)."""
    if ID not in frame.columns:
        raise ModelInputError(
            f"the input has no {ID!r} column (columns: {list(map(str, frame.columns))})"
        )
    if IMAGE not in frame.columns and PATH not in frame.columns:
        raise ModelInputError(
            f"the input needs an {IMAGE!r} (base64 file bytes) or a {PATH!r} column"
        )
    if frame.empty:
        raise ModelInputError("the input has no rows")
    ids, paths, rows, seen = [], [], {}, {}
    for number, row in enumerate(frame.to_dict("records")):
        image_id = _given(row.get(ID))
        if image_id is None:
            raise ModelInputError(f"row {number}: empty {ID!r}")
        image_id = str(image_id)
        where = f"row {number} ({ID} {image_id!r})"
        if image_id in seen:
            raise ModelInputError(f"{where}: the same {ID} as row {seen[image_id]}")
        seen[image_id] = number
        encoded, path = _given(row.get(IMAGE)), _given(row.get(PATH))
        if (encoded is None) == (path is None):
            raise ModelInputError(f"{where}: give exactly one of {IMAGE!r} and {PATH!r}")
        if path is not None:
            file = _confined(path, path_root, where)
            rows[file] = f"{where}, column {PATH} ({path})"
        else:
            file = _decoded(encoded, workdir / f"{number}", where)
            rows[file] = f"{where}, column {IMAGE}"
        ids.append(image_id)
        paths.append(file)
    return ImageFiles(ids, paths, rows)


def encode_file(path: Path) -> str:
    """A file's bytes as the `image` column carries them."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def png_example(path: Path, preprocess: dict[str, float], size: int) -> str:
    """An `image` value for the model's input example: `path` windowed as the model reads
    it, shrunk to at most `size` pixels a side, as base64 PNG (small, yet a real image)."""
    image = Image.fromarray(
        read_image(path, preprocess["low_percentile"], preprocess["high_percentile"])
    )
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _given(value: Any) -> Any:
    """None for a missing cell (None, NaN, empty string), else the value."""
    if (
        value is None
        or (isinstance(value, float) and value != value)
        or (isinstance(value, str) and not value.strip())
    ):
        return None
    return value


def _confined(value: Any, root: Path | None, where: str) -> Path:
    if root is None:
        raise ModelInputError(f"{where}, column {PATH}: {DISABLED}")
    file = confined_file(root, str(value))
    if file is None:  # one message for every refusal: nothing leaks about other files
        raise ModelInputError(f"{where}, column {PATH} ({value}): {REFUSED}")
    return file


def _decoded(encoded: Any, stem: Path, where: str) -> Path:
    if not isinstance(encoded, (str, bytes)):
        raise ModelInputError(
            f"{where}, column {IMAGE}: expected base64 text, got {type(encoded).__name__}"
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ModelInputError(f"{where}, column {IMAGE}: not valid base64 ({error})") from None
    suffix = image_suffix(data)
    if suffix is None:
        raise ModelInputError(
            f"{where}, column {IMAGE}: not a DICOM, PNG or JPEG file "
            f"({len(data)} bytes starting {data[:8]!r})"
        )
    file = stem.with_suffix(suffix)
    file.write_bytes(data)
    return file


def frame_of(image_ids: Sequence[str], paths: Sequence[Path], column: str = IMAGE) -> pd.DataFrame:
    """The input table of files: base64 bytes in `image`, or their paths in `path`."""
    values = [encode_file(p) if column == IMAGE else str(p) for p in paths]
    return pd.DataFrame({ID: list(image_ids), column: values})
