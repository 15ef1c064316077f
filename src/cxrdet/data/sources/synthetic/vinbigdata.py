"""The VinBigData demo set: a shuffled 3-reader train.csv and DICOMs in many storage variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from cxrdet.data.sources.synthetic.anatomy import sample_anatomy
from cxrdet.data.sources.synthetic.chest import Chest, render_chest
from cxrdet.data.sources.synthetic.encoding import (
    DIGITAL_XRAY,
    DicomVariant,
    coordinate,
    dicom_uid,
    new_dicom,
    stored_pixels,
    write_csv,
    write_dicom,
)
from cxrdet.data.sources.synthetic.progress import progress_bar
from cxrdet.data.sources.synthetic.samples import Sample
from cxrdet.data.sources.synthetic.scene import Lesion
from cxrdet.data.sources.synthetic.shapes import Box
from cxrdet.data.sources.synthetic.spec import DemoSpec
from cxrdet.data.sources.synthetic.streams import allocate, stream
from cxrdet.data.sources.synthetic.truth import box_row, boxes_table
from cxrdet.data.sources.vinbigdata import (
    CLASS_NAMES,
    COLUMNS,
    IMAGE_LABELS,
    IMAGES_DIR,
    NO_FINDING,
    NO_FINDING_ID,
    TRAIN_FILE,
)
from cxrdet.data.tables import SourceTables, conform_images

# The classes drawn (a plausible subset of the 14) and their relative frequency, roughly
# following the real data where aortic enlargement and cardiomegaly dominate.
_VINBIG_KINDS = {
    0: "aortic",
    1: "atelectasis",
    3: "cardiomegaly",
    4: "opacity",
    7: "faint_opacity",
    8: "nodule",
    10: "effusion",
    11: "pleural_thickening",
    12: "pneumothorax",
    13: "fibrosis",
}
_VINBIG_WEIGHTS = {
    0: 3.0,
    1: 1.0,
    3: 3.0,
    4: 1.0,
    7: 1.5,
    8: 1.5,
    10: 1.5,
    11: 2.0,
    12: 0.5,
    13: 1.0,
}
_READERS = [f"R{number}" for number in range(1, 18)]
VINBIG_NO_FINDING = (NO_FINDING_ID, NO_FINDING)


VINBIG_VARIANTS: tuple[DicomVariant, ...] = (
    DicomVariant("mono2-12bit-implicit", "MONOCHROME2", 12, ImplicitVRLittleEndian),
    DicomVariant("mono1-12bit-window", "MONOCHROME1", 12, ExplicitVRLittleEndian, window=True),
    DicomVariant("mono2-16bit-rescale", "MONOCHROME2", 16, ExplicitVRLittleEndian, rescale=True),
    DicomVariant("mono1-16bit-rle", "MONOCHROME1", 16, RLELossless),
    DicomVariant("mono2-12bit-j2k", "MONOCHROME2", 12, JPEG2000Lossless, window=True),
    DicomVariant("mono1-14bit-j2k-rescale", "MONOCHROME1", 14, JPEG2000Lossless, rescale=True),
    DicomVariant("mono2-8bit-jpeg-baseline", "MONOCHROME2", 8, JPEGBaseline8Bit),
)


def write_vinbigdata(root: Path, spec: DemoSpec, progress: bool) -> tuple[SourceTables, Sample]:
    file_rng = stream(spec.seed, "vinbigdata")
    labels = allocate(file_rng, spec.vinbigdata_images, {"normal": 0.4, "abnormal": 0.6})
    rows: list[tuple[list[Any], dict[str, Any] | None]] = []
    images = []
    sample = Sample("vinbigdata")
    with progress_bar(len(labels), "vinbigdata", progress) as bar:
        for index, label in enumerate(labels):
            rng = stream(spec.seed, "vinbigdata", index)
            image_id = rng.bytes(16).hex()
            width = round(spec.image_size * rng.uniform(0.9, 1.2))
            height = round(spec.image_size * rng.uniform(1.0, 1.3))
            class_ids = _vinbig_classes(rng) if label == "abnormal" else []
            findings = [_vinbig_kind(rng, class_id) for class_id in class_ids]
            chest = render_chest(sample_anatomy(rng), rng, height, width, findings)
            image_rows = _reader_rows(rng, image_id, class_ids, chest.lesions, width, height)
            rows += image_rows
            variant = VINBIG_VARIANTS[index % len(VINBIG_VARIANTS)]
            path = f"{IMAGES_DIR}/{image_id}.dicom"
            _write_vinbig_dicom(root / path, image_id, chest, variant, rng, spec.seed)
            images.append(
                dict(
                    image_id=image_id,
                    path=path,
                    width=width,
                    height=height,
                    label=label,
                    patient_id=image_id,
                )
            )
            drawn = [box for _, box in image_rows if box is not None]
            sample.offer(chest.to_uint8(), drawn, f"{label} ({variant.name})")
            bar.update()
    order = file_rng.permutation(len(rows))  # the real train.csv is not grouped by image
    rows = [rows[i] for i in order]
    write_csv(root / TRAIN_FILE, COLUMNS, [csv_row for csv_row, _ in rows])
    boxes = [box for _, box in rows if box is not None]
    tables = SourceTables(
        conform_images(pd.DataFrame(images)),
        boxes_table(boxes),
        list(CLASS_NAMES),
        list(IMAGE_LABELS),
    )
    return tables, sample


def _vinbig_classes(rng: np.random.Generator) -> list[int]:
    ids = list(_VINBIG_WEIGHTS)
    weights = np.array([_VINBIG_WEIGHTS[i] for i in ids])
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    chosen = sorted(
        int(i) for i in rng.choice(ids, count, replace=False, p=weights / weights.sum())
    )
    if 8 in chosen and rng.random() < 0.3:
        chosen.append(8)  # a second nodule
    return chosen


def _vinbig_kind(rng: np.random.Generator, class_id: int) -> str:
    if class_id == 8:
        return "nodule" if rng.random() < 0.7 else "mass"
    return _VINBIG_KINDS[class_id]


def _reader_rows(
    rng: np.random.Generator,
    image_id: str,
    class_ids: list[int],
    lesions: list[Lesion],
    width: int,
    height: int,
) -> list[tuple[list[Any], dict[str, Any] | None]]:
    """Three distinct readers; each marks every finding (the first reader) or most of them,
    with its own few-pixel jitter; a reader who marks nothing writes `No finding`."""
    readers = [str(r) for r in rng.choice(_READERS, 3, replace=False)]
    rows: list[tuple[list[Any], dict[str, Any] | None]] = []
    for position, reader in enumerate(readers):
        marked = [
            (c, lesion)
            for c, lesion in zip(class_ids, lesions, strict=True)
            if position == 0 or rng.random() < 0.85
        ]
        for class_id, lesion in marked:
            x, y, w, h = _jitter(rng, lesion.box, width, height)
            name = CLASS_NAMES[class_id]
            csv_row = [image_id, name, class_id, reader, *map(coordinate, (x, y, x + w, y + h))]
            rows.append((csv_row, box_row(image_id, (x, y, w, h), class_id, name, reader)))
        if not marked:
            no_id, no_name = VINBIG_NO_FINDING
            rows.append(([image_id, no_name, no_id, reader, "", "", "", ""], None))
    return rows


def _jitter(rng: np.random.Generator, box: Box, width: int, height: int) -> Box:
    """Each edge moved by up to 5% of the box size (IoU between readers stays above 0.6)."""
    x, y, w, h = box
    jx, jy = int(0.05 * w), int(0.05 * h)
    x0 = max(0, x + int(rng.integers(-jx, jx + 1)))
    y0 = max(0, y + int(rng.integers(-jy, jy + 1)))
    x1 = min(width, x + w + int(rng.integers(-jx, jx + 1)))
    y1 = min(height, y + h + int(rng.integers(-jy, jy + 1)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _write_vinbig_dicom(
    path: Path,
    image_id: str,
    chest: Chest,
    variant: DicomVariant,
    rng: np.random.Generator,
    seed: int,
) -> None:
    stored, lut_tags = stored_pixels(chest.image, variant, rng)
    tags = dict(
        Modality="DX",
        PatientID="",
        PatientSex=str(rng.choice(["M", "F", "O"])),
        PatientAge=f"{int(rng.integers(18, 90)):03d}Y",
        BodyPartExamined="CHEST",
        PixelSpacing=["0.175", "0.175"],
        **lut_tags,
    )
    ds = new_dicom(DIGITAL_XRAY, dicom_uid(seed, "vinbigdata", image_id), variant.syntax, tags)
    write_dicom(path, ds, stored, variant.photometric, variant.bits)
