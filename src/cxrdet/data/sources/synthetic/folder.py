"""The folder demo set: PNG / JPEG / DICOM images, annotations.csv and images.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import ExplicitVRLittleEndian

from cxrdet.data.sources.folder import (
    ANNOTATIONS_FILE,
    BOX_COLUMNS,
    IMAGE_TABLE_FILE,
    IMAGES_DIR,
)
from cxrdet.data.sources.synthetic.anatomy import sample_anatomy
from cxrdet.data.sources.synthetic.chest import render_chest
from cxrdet.data.sources.synthetic.encoding import (
    SECONDARY_CAPTURE,
    dicom_uid,
    new_dicom,
    save_jpeg,
    save_png,
    write_csv,
    write_dicom,
)
from cxrdet.data.sources.synthetic.progress import progress_bar
from cxrdet.data.sources.synthetic.samples import Sample
from cxrdet.data.sources.synthetic.spec import DemoSpec
from cxrdet.data.sources.synthetic.streams import allocate, stream
from cxrdet.data.sources.synthetic.truth import box_row, boxes_table
from cxrdet.data.tables import SourceTables, conform_images

_FOLDER_EXTENSIONS = (".png", ".jpg", ".dcm")
_FOLDER_LABELS = ("nodule", "opacity")  # box labels, also the kinds drawn


def write_folder(root: Path, spec: DemoSpec, progress: bool) -> tuple[SourceTables, Sample]:
    file_rng = stream(spec.seed, "folder")
    labels = allocate(file_rng, spec.folder_images, {"abnormal": 0.5, "normal": 0.5})
    size = spec.image_size
    annotation_rows, image_rows, images, named_boxes = [], [], [], []
    sample = Sample("folder")
    patient, abnormal = 0, 0
    with progress_bar(len(labels), "folder", progress) as bar:
        for index, label in enumerate(labels):
            if index == 0 or file_rng.random() < 0.6:
                patient += 1  # otherwise a second image of the same patient
            patient_id = f"P{patient:04d}"
            rng = stream(spec.seed, "folder", index)
            names = _folder_findings(rng, abnormal) if label == "abnormal" else []
            abnormal += label == "abnormal"
            anatomy = sample_anatomy(stream(spec.seed, "folder-patient", patient))
            chest = render_chest(anatomy, rng, size, size, names)
            pixels = chest.to_uint8()
            image_id = f"cxr_{index:04d}"
            extension = _FOLDER_EXTENSIONS[index % len(_FOLDER_EXTENSIONS)]
            path = f"{IMAGES_DIR}/{image_id}{extension}"
            _write_folder_image(root / path, pixels, patient_id, spec.seed)
            drawn = []
            for name, lesion in zip(names, chest.lesions, strict=True):
                annotation_rows.append([image_id, *lesion.box, name])
                named_boxes.append((image_id, lesion.box, name))
                drawn.append(
                    dict(
                        zip("xywh", lesion.box, strict=True),
                        class_id=_FOLDER_LABELS.index(name),
                        class_name=name,
                    )
                )
            image_rows.append([image_id, label, patient_id])
            images.append(
                dict(
                    image_id=image_id,
                    path=path,
                    width=size,
                    height=size,
                    label=label,
                    patient_id=patient_id,
                )
            )
            sample.offer(pixels, drawn, label)
            bar.update()
    write_csv(
        root / ANNOTATIONS_FILE,
        BOX_COLUMNS,
        annotation_rows,
    )
    write_csv(root / IMAGE_TABLE_FILE, ["image_id", "label", "patient_id"], image_rows)
    class_names = sorted({name for _, _, name in named_boxes})
    boxes = [box_row(i, box, class_names.index(name), name) for i, box, name in named_boxes]
    tables = SourceTables(
        conform_images(pd.DataFrame(images)), boxes_table(boxes), class_names, sorted(set(labels))
    )
    return tables, sample


def _folder_findings(rng: np.random.Generator, abnormal_index: int) -> list[str]:
    """Alternates opacity / nodule so both box classes exist in small sets."""
    found = [_FOLDER_LABELS[1 - abnormal_index % 2]]
    if rng.random() < 0.3:
        found.append(str(rng.choice(_FOLDER_LABELS)))
    return found


def _write_folder_image(path: Path, pixels: np.ndarray, patient_id: str, seed: int) -> None:
    if path.suffix == ".png":
        save_png(path, pixels)
    elif path.suffix == ".jpg":
        save_jpeg(path, pixels)
    else:
        tags = dict(Modality="DX", PatientID=patient_id, BodyPartExamined="CHEST")
        ds = new_dicom(
            SECONDARY_CAPTURE, dicom_uid(seed, "folder", path.name), ExplicitVRLittleEndian, tags
        )
        write_dicom(path, ds, pixels, "MONOCHROME2", 8)
