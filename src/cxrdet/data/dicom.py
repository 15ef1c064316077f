"""DICOM -> 2-D float image (displayed brightness) and the header facts the sources need.

The display pipeline follows DICOM PS3.3 C.11: stored values -> modality LUT (rescale
slope/intercept or Modality LUT Sequence) -> VOI LUT (VOI LUT Sequence or window
centre/width) -> presentation (MONOCHROME1 inverted, so higher always means brighter).
Compressed transfer syntaxes decode through pydicom's pixel backends; the pylibjpeg
plugins (openjpeg, libjpeg, rle) cover JPEG 2000, JPEG-LS, JPEG lossless and RLE.

Every failure raises DicomReadError(path, reason): a corrupt file never escapes as a raw
pydicom or numpy exception.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrdet.errors import DicomReadError, ImageReadError

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# Smallest pixel data element header: tag (4) + length (4), implicit VR.
_ELEMENT_HEADER_BYTES = 8
# Decompression-bomb guard, checked from the header before any decoding: a few MB of RLE can
# declare 16000 x 16000 pixels (4 GB decoded). The largest radiograph detectors are ~43 cm at
# 0.1 mm (~18.5 MP); 50 MP leaves room for any real chest X-ray. PNG/JPEG use the same limit.
MAX_PIXELS = 50_000_000
_AGE = re.compile(r"^(\d+)([DWMY]?)$")
_UNITS_PER_YEAR = {"D": 365, "W": 52, "M": 12, "Y": 1, "": 1}


@dataclass(frozen=True)
class DicomHeader:
    """What the sources read from a DICOM header (no pixel decoding)."""

    rows: int
    columns: int
    sex: str | None  # "M" / "F"; None when absent or other
    age: int | None  # years
    view: str | None  # ViewPosition, e.g. "PA" / "AP"
    photometric: str
    bits_stored: int
    patient_id: str | None


def read_dicom_header(path: str | Path) -> DicomHeader:
    """Read the header only (stop_before_pixels) and check the file holds one 2-D image.

    Besides unreadable files, this refuses what can be seen without decoding: missing
    Rows/Columns, multi-frame, non-grayscale, no pixel data, and uncompressed pixel data
    shorter than Rows x Columns needs (a truncated copy), so that the sources can list such
    files as rejected before any image is decoded.
    """
    ds, bytes_left = _read_dataset(path, pixels=False)
    _check_single_grayscale_image(ds, path)
    check_pixel_count(int(ds.Rows), int(ds.Columns), path, DicomReadError)
    _check_pixel_bytes_left(ds, bytes_left, path)
    with warnings.catch_warnings():
        # RSNA's bare ages ("47") are invalid AS values: pydicom warns once per value.
        warnings.simplefilter("ignore", UserWarning)
        age = parse_age(ds.get("PatientAge"))
    return DicomHeader(
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        sex=parse_sex(ds.get("PatientSex")),
        age=age,
        view=_text(ds.get("ViewPosition")),
        photometric=str(ds.PhotometricInterpretation),
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        patient_id=_text(ds.get("PatientID")),
    )


def read_dicom(path: str | Path) -> np.ndarray:
    """Decode a single-frame grayscale DICOM into displayed brightness (2-D float32).

    Applies the modality LUT, then the VOI LUT or the first window (when the file has
    one), then inverts MONOCHROME1 within the output range, so that higher is brighter
    (denser) for every file. The values are not normalised: pass them to `to_uint8`.

    Windowing and normalisation: a window clips values outside it to the output range's
    ends, so the later percentile stretch of `to_uint8` works within the window the
    modality chose (bone and air saturate as on the reading screen). Without a window the
    full modality range reaches `to_uint8`, whose percentile clip then acts as an
    automatic window. An invalid window (width < 1) is ignored rather than failing.
    """
    ds, _ = _read_dataset(path, pixels=True)
    _check_single_grayscale_image(ds, path)
    check_pixel_count(int(ds.Rows), int(ds.Columns), path, DicomReadError)
    if "PixelData" not in ds:  # float pixel data is for parametric maps, not radiographs
        raise DicomReadError(path, "no pixel data (PixelData element missing)")
    _check_native_pixel_length(ds, path)
    try:
        stored = ds.pixel_array
    except Exception as error:  # decoders raise many types on corrupt or unsupported data
        syntax = _transfer_syntax(ds)
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        raise DicomReadError(path, f"cannot decode pixel data ({name}): {error}") from None
    if stored.ndim != 2:
        raise DicomReadError(path, f"expected a 2-D image, pixel data has shape {stored.shape}")
    try:
        displayed = _display_values(stored, ds)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            low, high = _display_range(stored.dtype, ds)
            displayed = (low + high) - displayed
    except Exception as error:  # malformed rescale or LUT elements
        raise DicomReadError(path, f"cannot apply the modality / VOI LUT: {error}") from None
    return displayed.astype(np.float32)


def to_uint8(
    array: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5
) -> np.ndarray:
    """Percentile clip and linear scale to uint8.

    Values at or below the `low_percentile` percentile become 0, at or above the
    `high_percentile` percentile 255, linearly in between (rounded). When the two
    percentiles coincide (a flat image with a few outliers) the full min..max range is
    used instead; a constant image becomes all zeros.
    """
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise ValueError(
            f"need 0 <= low_percentile < high_percentile <= 100, "
            f"got {low_percentile} and {high_percentile}"
        )
    values = np.asarray(array, dtype=np.float32)
    low, high = np.percentile(values, [low_percentile, high_percentile])
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def parse_age(value: object) -> int | None:
    """Age in whole years from a DICOM AS value ("047Y", "006M") or a bare number ("47").

    RSNA stores bare numbers; the standard form has a D/W/M/Y unit. Anything else is None.
    """
    text = _text(value)
    if text is None:
        return None
    match = _AGE.match(text.upper().replace(" ", ""))
    if match is None:
        return None
    number, unit = match.groups()
    return int(number) // _UNITS_PER_YEAR[unit]


def parse_sex(value: object) -> str | None:
    """ "M" or "F" from PatientSex-like text ("M", "f", "Male"); anything else is None."""
    text = _text(value)
    initial = text[0].upper() if text else None
    return initial if initial in ("M", "F") else None


def _text(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _read_dataset(path: str | Path, *, pixels: bool) -> tuple[Dataset, int]:
    """The parsed dataset and how many bytes of the file lie after what was parsed."""
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size == 0:
                raise DicomReadError(path, "empty file")
            ds = pydicom.dcmread(fp, stop_before_pixels=not pixels)
            return ds, size - fp.tell()
    except DicomReadError:
        raise
    except FileNotFoundError:
        raise DicomReadError(path, "file not found") from None
    except pydicom.errors.InvalidDicomError:
        raise DicomReadError(
            path, "not a DICOM file (no 'DICM' marker after the preamble)"
        ) from None
    except Exception as error:  # pydicom raises many types on corrupt headers
        raise DicomReadError(
            path, f"unreadable DICOM header: {type(error).__name__}: {error}"
        ) from None


def _check_single_grayscale_image(ds: Dataset, path: str | Path) -> None:
    missing = [tag for tag in ("Rows", "Columns") if ds.get(tag) is None]
    if missing:
        raise DicomReadError(
            path, f"no {' / '.join(missing)} in the header (truncated or not an image)"
        )
    frames = _int_or_none(ds.get("NumberOfFrames")) or 1
    if frames > 1:
        raise DicomReadError(path, f"multi-frame DICOM ({frames} frames); expected one image")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAYSCALE:
        raise DicomReadError(path, f"photometric interpretation {photometric!r} is not grayscale")


def check_pixel_count(
    height: int, width: int, path: str | Path, error: type[ImageReadError]
) -> None:
    """Refuse an image that declares more than MAX_PIXELS before it is decoded."""
    if height * width > MAX_PIXELS:
        raise error(
            path,
            f"declares {width} x {height} pixels ({height * width / 1e6:.0f} MP), over the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit of one radiograph (decompression-bomb guard)",
        )


def _check_pixel_bytes_left(ds: Dataset, bytes_left: int, path: str | Path) -> None:
    """Header-only check: pixel data follows the header, and is complete when uncompressed."""
    if bytes_left == 0:
        raise DicomReadError(path, "no pixel data (PixelData element missing)")
    expected = _native_pixel_bytes(ds)
    if expected is not None and bytes_left < expected + _ELEMENT_HEADER_BYTES:
        raise DicomReadError(
            path, f"truncated: pixel data needs {expected} bytes, {bytes_left} left in the file"
        )


def _check_native_pixel_length(ds: Dataset, path: str | Path) -> None:
    expected = _native_pixel_bytes(ds)
    if expected is not None and "PixelData" in ds and len(ds.PixelData) < expected:
        raise DicomReadError(
            path, f"truncated: pixel data has {len(ds.PixelData)} of {expected} bytes"
        )


def _native_pixel_bytes(ds: Dataset) -> int | None:
    """Bytes uncompressed (native) pixel data must have; None for compressed syntaxes."""
    syntax = _transfer_syntax(ds)
    bits = _int_or_none(ds.get("BitsAllocated"))
    if syntax is None or syntax.is_compressed or not bits:
        return None
    samples = _int_or_none(ds.get("SamplesPerPixel")) or 1
    return (int(ds.Rows) * int(ds.Columns) * samples * bits + 7) // 8


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID | None:
    file_meta = getattr(ds, "file_meta", None)
    return file_meta.get("TransferSyntaxUID") if file_meta is not None else None


def _display_values(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT then VOI LUT / window, as float64."""
    values = apply_modality_lut(values, ds)
    try:
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    except ValueError:  # an invalid window (width < 1): show the modality values instead
        pass
    return np.asarray(values, dtype=np.float64)


def _display_range(dtype: np.dtype, ds: Dataset) -> tuple[float, float]:
    """Lowest and highest displayed value any stored value can produce.

    MONOCHROME1 is inverted within this range (not the image's own min/max), so a
    MONOCHROME1 file reads exactly like the MONOCHROME2 file with complemented pixels.
    """
    bits = int(ds.get("BitsStored") or np.dtype(dtype).itemsize * 8)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    # Every level when cheap (LUTs need not be monotonic), else the two extremes.
    levels = np.arange(low, high + 1) if bits <= 16 else np.array([low, high])
    displayed = _display_values(levels.astype(dtype), ds)
    return float(displayed.min()), float(displayed.max())


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
