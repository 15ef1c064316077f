"""The RSNA Pneumonia demo set: labels CSV, detailed class info and 8-bit Kaggle-style DICOMs."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.uid import ExplicitVRLittleEndian

from cxrdet.data.sources.rsna import (
    BOX_FIELDS,
    CLASS_INFO_FILE,
    IMAGE_LABELS,
    IMAGES_DIR,
    LABELS_FILE,
    NORMAL,
    NOT_NORMAL,
    OPACITY,
)
from cxrdet.data.sources.synthetic.anatomy import sample_anatomy
from cxrdet.data.sources.synthetic.chest import render_chest
from cxrdet.data.sources.synthetic.encoding import (
    SECONDARY_CAPTURE,
    coordinate,
    dicom_uid,
    new_dicom,
    write_csv,
    write_dicom,
)
from cxrdet.data.sources.synthetic.progress import progress_bar
from cxrdet.data.sources.synthetic.samples import Sample
from cxrdet.data.sources.synthetic.spec import DemoSpec
from cxrdet.data.sources.synthetic.streams import allocate, stream
from cxrdet.data.sources.synthetic.truth import box_row, boxes_table
from cxrdet.data.tables import SourceTables, conform_images

_RSNA_OTHER = (
    "cardiomegaly",
    "effusion",
    "nodule",
    "fibrosis",
    "pleural_thickening",
    "atelectasis",
    "emphysema",
    "hernia",
)


def write_rsna(root: Path, spec: DemoSpec, progress: bool) -> tuple[SourceTables, Sample]:
    size = spec.image_size
    labels = allocate(
        stream(spec.seed, "rsna"),
        spec.rsna_images,
        {OPACITY: 0.25, NOT_NORMAL: 0.40, NORMAL: 0.35},
    )
    label_rows, class_rows, images, boxes = [], [], [], []
    sample = Sample("rsna")
    with progress_bar(len(labels), "rsna", progress) as bar:
        for index, label in enumerate(labels):
            rng = stream(spec.seed, "rsna", index)
            patient = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            sex = "M" if rng.random() < 0.55 else "F"
            age = int(np.clip(rng.normal(47, 16), 2, 90))
            view = "AP" if rng.random() < (0.6 if label == OPACITY else 0.35) else "PA"
            chest = render_chest(sample_anatomy(rng), rng, size, size, _rsna_findings(rng, label))
            pixels = chest.to_uint8()
            tags = _rsna_tags(patient, sex, age, view, size)
            ds = new_dicom(
                SECONDARY_CAPTURE,
                dicom_uid(spec.seed, "rsna", patient),
                ExplicitVRLittleEndian,
                tags,
            )
            path = f"{IMAGES_DIR}/{patient}.dcm"
            write_dicom(root / path, ds, pixels, "MONOCHROME2", 8)

            found = [lesion.box for lesion in chest.lesions if label == OPACITY]
            label_rows += [[patient, *map(coordinate, box), 1] for box in found] or [
                [patient, "", "", "", "", 0]
            ]
            class_rows += [[patient, label]] * max(1, len(found))
            boxes += [box_row(patient, box, 0, OPACITY) for box in found]
            images.append(
                dict(
                    image_id=patient,
                    path=path,
                    width=size,
                    height=size,
                    label=label,
                    patient_id=patient,
                    sex=sex,
                    age=age,
                    view=view,
                )
            )
            sample.offer(
                pixels,
                [
                    dict(zip("xywh", box, strict=True), class_id=0, class_name=OPACITY)
                    for box in found
                ],
                label,
            )
            bar.update()
    write_csv(
        root / LABELS_FILE,
        ["patientId", *BOX_FIELDS, "Target"],
        label_rows,
    )
    write_csv(root / CLASS_INFO_FILE, ["patientId", "class"], class_rows)
    tables = SourceTables(
        conform_images(pd.DataFrame(images)),
        boxes_table(boxes),
        [OPACITY],
        list(IMAGE_LABELS),
    )
    return tables, sample


def _rsna_findings(rng: np.random.Generator, label: str) -> list[str]:
    if label == OPACITY:
        return ["opacity"] * int(rng.choice([1, 2, 3], p=[0.35, 0.55, 0.10]))
    if label == NORMAL:
        return []
    count = int(rng.choice([1, 2], p=[0.7, 0.3]))
    return [str(kind) for kind in rng.choice(_RSNA_OTHER, count, replace=False)]


def _rsna_tags(patient: str, sex: str, age: int, view: str, size: int) -> dict[str, Any]:
    """The header Kaggle's RSNA files carry (anonymised dates, SC storage, CR modality)."""
    spacing = f"{0.168 * 1024 / size:.6f}"
    return dict(
        StudyDate="19010101",
        StudyTime="000000.00",
        AccessionNumber="",
        Modality="CR",
        ConversionType="WSD",
        ReferringPhysicianName="",
        SeriesDescription=f"view: {view}",
        PatientName=patient,
        PatientID=patient,
        PatientBirthDate="",
        PatientSex=sex,
        PatientAge=str(age),
        BodyPartExamined="CHEST",
        ViewPosition=view,
        StudyInstanceUID=dicom_uid("study", patient),
        SeriesInstanceUID=dicom_uid("series", patient),
        StudyID="",
        SeriesNumber=1,
        InstanceNumber=1,
        PatientOrientation="",
        PixelSpacing=[spacing, spacing],
    )
