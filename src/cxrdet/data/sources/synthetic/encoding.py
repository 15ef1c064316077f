"""Writing pixels and rows as the real files do: DICOM (several storage variants), PNG,
JPEG and CSV text."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import config as dicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class DicomVariant:
    """How one VinBigData file stores its pixels (cycled by image index)."""

    name: str
    photometric: str
    bits: int  # Bits Stored; 8 means uint8 storage, otherwise uint16
    syntax: UID
    rescale: bool = False  # Rescale Slope/Intercept that a reader must apply
    window: bool = False  # Window Center/Width covering the stored range


# pylibjpeg-rle is ~10x faster than pydicom's pure-Python RLE encoder.
_ENCODING_PLUGINS = {RLELossless: "pylibjpeg", JPEG2000Lossless: "pylibjpeg"}


def dicom_uid(*keys: object) -> UID:
    """A deterministic UID: the same keys always give the same UID."""
    return generate_uid(entropy_srcs=[str(key) for key in keys])


def new_dicom(sop_class: str, instance_uid: UID, syntax: UID, tags: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    for keyword, value in tags.items():
        if keyword == "PatientAge":
            # Kaggle's RSNA files hold bare numbers ("47"), which are not valid AS values.
            ds.add(DataElement(0x00101010, "AS", value, validation_mode=dicom_config.IGNORE))
        else:
            setattr(ds, keyword, value)
    return ds


def write_dicom(path: Path, ds: Dataset, pixels: np.ndarray, photometric: str, bits: int) -> None:
    """Set the pixels in the dataset's transfer syntax (compressing when it says so) and save."""
    syntax = ds.file_meta.TransferSyntaxUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax.is_compressed else syntax
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    if syntax == JPEGBaseline8Bit:
        # pydicom has no JPEG baseline encoder: encode with Pillow and encapsulate.
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif syntax.is_compressed:
        ds.compress(
            syntax, pixels, encoding_plugin=_ENCODING_PLUGINS[syntax], generate_instance_uid=False
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def stored_pixels(
    image: np.ndarray, variant: DicomVariant, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Detector values on part of the bit range, inverted for MONOCHROME1, plus the LUT tags."""
    top = 2**variant.bits - 1
    if variant.bits == 8:
        low, span = 0.0, float(top)
    else:
        low, span = rng.uniform(0.02, 0.12) * top, rng.uniform(0.55, 0.85) * top
    values = np.round(low + image * span)
    stored = top - values if variant.photometric == "MONOCHROME1" else values
    stored = stored.astype(np.uint8 if variant.bits == 8 else np.uint16)
    tags: dict[str, Any] = {}
    slope, intercept = (0.5, -1024.0) if variant.rescale else (1.0, 0.0)
    if variant.rescale:
        tags.update(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="US")
    if variant.window:
        lowest, highest = (float(v) * slope + intercept for v in (stored.min(), stored.max()))
        tags.update(
            WindowCenter=round((lowest + highest) / 2, 1),
            WindowWidth=round(highest - lowest + 1, 1),
        )
    return stored, tags


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path, format="PNG", compress_level=1)  # speed over size


def save_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path, format="JPEG", quality=95)


def write_csv(path: Path, header: Sequence[str] | str, rows: Iterable[Sequence[Any]]) -> None:
    """Rows as text exactly as given; a str header is written verbatim (NIH's odd headers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if isinstance(header, str):
            handle.write(header + "\n")
        else:
            writer.writerow(header)
        writer.writerows(rows)


def coordinate(value: float) -> str:
    """Kaggle writes pixel coordinates as floats ("264.0")."""
    return f"{value:.1f}"
