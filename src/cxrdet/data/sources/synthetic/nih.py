"""The NIH ChestX-ray14 demo set: Data_Entry and BBox_List with their real headers, PNGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.data.sources.nih import (
    BBOX_FILE,
    BBOX_SPELLINGS,
    ENTRY_FILE,
    FINDINGS,
    IMAGE_LABELS,
    IMAGES_DIR,
    NO_FINDING,
    TARGET_COLUMNS,
)
from cxrdet.data.sources.synthetic.anatomy import sample_anatomy
from cxrdet.data.sources.synthetic.chest import render_chest
from cxrdet.data.sources.synthetic.encoding import save_png, write_csv
from cxrdet.data.sources.synthetic.progress import progress_bar
from cxrdet.data.sources.synthetic.samples import Sample
from cxrdet.data.sources.synthetic.shapes import Box
from cxrdet.data.sources.synthetic.spec import DemoSpec
from cxrdet.data.sources.synthetic.streams import stream
from cxrdet.data.sources.synthetic.truth import box_row, boxes_table
from cxrdet.data.tables import SourceTables, conform_images

NIH_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


# The painter drawn for each finding: its lower-cased name unless overridden here.
_KIND_OVERRIDES = {
    "Infiltration": "faint_opacity",
    "Pneumonia": "opacity",
    "Consolidation": "opacity",
}
_NIH_KINDS = {finding: _KIND_OVERRIDES.get(finding, finding.lower()) for finding in FINDINGS}
# The eight findings the real BBox_List_2017.csv has boxes for.
NIH_BOXED = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)


def write_nih(root: Path, spec: DemoSpec, progress: bool) -> tuple[SourceTables, Sample]:
    file_rng = stream(spec.seed, "nih")
    entry_rows, bbox_rows, images, boxes, targets = [], [], [], [], []
    sample = Sample("nih")
    abnormal = 0
    with progress_bar(spec.nih_images, "nih", progress) as bar:
        for patient, follow_up in _nih_studies(file_rng, spec.nih_images):
            rng = stream(spec.seed, "nih", patient, follow_up)
            anatomy = sample_anatomy(
                stream(spec.seed, "nih-patient", patient)
            )  # follow-ups share anatomy
            found: list[str] = []
            if file_rng.random() >= 0.45:
                found = _nih_findings(rng, abnormal)
                abnormal += 1
            chest = render_chest(
                anatomy, rng, spec.image_size, spec.image_size, [_NIH_KINDS[f] for f in found]
            )
            pixels = chest.to_uint8()
            stem = f"{patient:08d}_{follow_up:03d}"
            save_png(root / IMAGES_DIR / f"{stem}.png", pixels)
            entry_rows.append(
                _nih_entry(rng, stem, found, patient, follow_up, _nih_patient(spec.seed, patient))
            )
            # Boxes for alternate rounds of the 14-finding cycle: "for some images" as in NIH.
            listed = bool(found) and (abnormal - 1) // len(FINDINGS) % 2 == 0
            drawn = []
            for finding, lesion in zip(found, chest.lesions, strict=True):
                if listed and finding in NIH_BOXED:
                    text = _nih_box_text(rng, lesion.box, spec.image_size)
                    bbox_rows.append([f"{stem}.png", BBOX_SPELLINGS.get(finding, finding), *text])
                    box = box_row(stem, [float(v) for v in text], FINDINGS.index(finding), finding)
                    boxes.append(box)
                    drawn.append(box)
            images.append(
                dict(
                    image_id=stem,
                    path=f"{IMAGES_DIR}/{stem}.png",
                    width=spec.image_size,
                    height=spec.image_size,
                    label="abnormal" if found else "normal",
                    patient_id=str(patient),
                )
            )
            targets.append([int(f in found) for f in FINDINGS] + [int(bool(found))])
            sample.offer(pixels, drawn, "|".join(sorted(found)) or NO_FINDING)
            bar.update()
    write_csv(root / ENTRY_FILE, NIH_ENTRY_HEADER, entry_rows)
    write_csv(root / BBOX_FILE, NIH_BBOX_HEADER, bbox_rows)
    tables = SourceTables(
        conform_images(pd.DataFrame(images)),
        boxes_table(boxes),
        list(FINDINGS),
        list(IMAGE_LABELS),
        targets=pd.DataFrame(targets, columns=TARGET_COLUMNS, dtype="int64"),
    )
    return tables, sample


def _nih_studies(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """(patient, follow-up) pairs in file order: patients numbered from 1, 1-6 studies each."""
    studies: list[tuple[int, int]] = []
    patient = 0
    while len(studies) < count:
        patient += 1
        follow_ups = min(int(rng.geometric(0.45)), 6, count - len(studies))
        studies += [(patient, follow_up) for follow_up in range(follow_ups)]
    return studies


def _nih_findings(rng: np.random.Generator, abnormal_index: int) -> list[str]:
    """Cycles the primary finding through all 14 so every target column gets positives."""
    found = [FINDINGS[abnormal_index % len(FINDINGS)]]
    if rng.random() < 0.3:
        found.append(str(rng.choice([f for f in FINDINGS if f != found[0]])))
    return sorted(found)


@dataclass(frozen=True)
class _NihPatient:
    age: int
    gender: str


def _nih_patient(seed: int, patient: int) -> _NihPatient:
    rng = stream(seed, "nih-person", patient)
    return _NihPatient(int(rng.integers(8, 85)), "M" if rng.random() < 0.56 else "F")


def _nih_entry(
    rng: np.random.Generator,
    stem: str,
    found: list[str],
    patient: int,
    follow_up: int,
    person: _NihPatient,
) -> list[Any]:
    """One Data_Entry row (11 fields under the 12-field header, as in the real file)."""
    spacing = str(rng.choice(["0.143", "0.139", "0.168"]))
    return [
        f"{stem}.png",
        "|".join(found) or NO_FINDING,
        follow_up,
        patient,
        person.age + follow_up // 3,
        person.gender,
        "AP" if rng.random() < 0.4 else "PA",
        int(rng.integers(2000, 3057)),
        int(rng.integers(2000, 3057)),
        spacing,
        spacing,
    ]


def _nih_box_text(rng: np.random.Generator, box: Box, size: int) -> list[str]:
    """x, y, w, h with two decimals (NIH boxes were rescaled), kept inside the image."""
    x, y, w, h = box
    x_text = round(min(max(0.0, x + rng.uniform(-0.5, 0.5)), size - 1.0), 2)
    y_text = round(min(max(0.0, y + rng.uniform(-0.5, 0.5)), size - 1.0), 2)
    w_text = round(min(w + rng.uniform(-0.5, 0.5), size - x_text), 2)
    h_text = round(min(h + rng.uniform(-0.5, 0.5), size - y_text), 2)
    return [repr(v) for v in (x_text, y_text, w_text, h_text)]
