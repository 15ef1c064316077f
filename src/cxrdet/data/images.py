"""Any supported image file (DICOM, PNG, JPEG) -> 2-D uint8, and sizes from headers only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cxrdet.data.dicom import check_pixel_count, read_dicom, read_dicom_header, to_uint8
from cxrdet.errors import ImageReadError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
IMAGE_SUFFIXES = DICOM_SUFFIXES | RASTER_SUFFIXES
# PIL modes holding more than 8 bits per pixel: stretched like DICOM, not truncated to 8 bits.
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})

T = TypeVar("T")


def read_image(
    path: str | Path, low_percentile: float = 0.5, high_percentile: float = 99.5
) -> np.ndarray:
    """Decode one image to a 2-D uint8 array (row-major, height x width).

    DICOM goes through `read_dicom` + `to_uint8` (percentile window). 8-bit PNG/JPEG are
    converted to grayscale ('L') as stored; 16-bit and float PNGs get the same percentile
    stretch as DICOM, since their values rarely span the full 16-bit range (12-bit data
    exported as is would otherwise come out nearly black).
    """
    suffix = _checked_suffix(path)
    if suffix in DICOM_SUFFIXES:
        return to_uint8(read_dicom(path), low_percentile, high_percentile)
    with _open_raster(path) as image:
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data
            raise ImageReadError(path, f"cannot decode image: {error}") from None
        if image.mode in _HIGH_DEPTH_MODES:
            return to_uint8(np.asarray(image), low_percentile, high_percentile)
        return np.asarray(image.convert("L"))


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels."""
    if _checked_suffix(path) in DICOM_SUFFIXES:
        header = read_dicom_header(path)
        return header.columns, header.rows
    with _open_raster(path) as image:
        return image.size


def scan_headers(
    root: Path,
    image_ids: Sequence[str],
    paths: Sequence[str],
    read: Callable[[Path], T] = read_image_size,  # type: ignore[assignment]
) -> tuple[dict[str, T], list[tuple[str, str, str]]]:
    """`read(root / path)` for every image, with a progress bar (the work is I/O bound).

    Returns the results of the readable images by image id, and (image_id, path, reason)
    for each image that could not be read, the SourceTables.rejected layout.
    """
    readable: dict[str, T] = {}
    rejected: list[tuple[str, str, str]] = []
    for image_id, path in tqdm(
        list(zip(image_ids, paths)), desc="reading image headers", unit="img", leave=False
    ):
        try:
            readable[image_id] = read(root / path)
        except ImageReadError as error:
            rejected.append((image_id, path, error.reason))
    return readable, rejected


def _checked_suffix(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        allowed = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ImageReadError(
            path, f"unsupported file type {suffix or '(none)'!r}; expected {allowed}"
        )
    return suffix


def _open_raster(path: str | Path) -> Image.Image:
    """The opened file, its header read (lazily: pixels are decoded by `load`)."""
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(path, f"not a readable image: {error}") from None
    width, height = image.size
    try:
        check_pixel_count(height, width, path, ImageReadError)
    except ImageReadError:
        image.close()
        raise
    return image
