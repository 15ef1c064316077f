"""NIH ChestX-ray14 -> canonical tables with 15 multi-label targets (14 findings + abnormal).

    raw_dir/Data_Entry_2017.csv    Image Index,Finding Labels,Follow-up #,Patient ID,
                                   Patient Age,Patient Gender,View Position,
                                   OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],
    raw_dir/images/<Image Index>   (or anywhere below raw_dir: images_001/images/...)
    raw_dir/BBox_List_2017.csv     optional: Image Index,Finding Label,Bbox [x,y,w,h],,,

Quirks of the real files handled here: the bracketed header names span two CSV fields
each and the header ends with a comma; the box file spells Infiltration "Infiltrate" and
splits its box over four fields; ages are bare numbers (older releases: "058Y").
Image id = Image Index without its extension.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.dicom import parse_age, parse_sex
from cxrdet.data.images import scan_headers
from cxrdet.data.sources._csv import (
    ABNORMAL,
    BINARY_LABELS,
    OnBadRows,
    RowFilter,
    read_table,
    sized_images,
)
from cxrdet.data.tables import SourceTables, conform_boxes, conform_images, empty_boxes
from cxrdet.errors import AnnotationError

ENTRY_FILE = "Data_Entry_2017.csv"
BBOX_FILE = "BBox_List_2017.csv"
IMAGES_DIR = "images"
FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
NO_FINDING = "No Finding"
TARGET_COLUMNS = [*FINDINGS, ABNORMAL]
IMAGE_LABELS = BINARY_LABELS
ENTRY_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
]
# BBox_List spells one finding differently from Data_Entry: finding -> its BBox_List spelling.
BBOX_SPELLINGS = {"Infiltration": "Infiltrate"}
_BOX_LABEL_SPELLINGS = {spelled: finding for finding, spelled in BBOX_SPELLINGS.items()}


def load(raw_dir: Path, *, on_bad_rows: OnBadRows = "raise") -> SourceTables:
    raw_dir = Path(raw_dir)
    dropped: list[tuple[str, int | None, str]] = []
    entry_rows = RowFilter(raw_dir / ENTRY_FILE, on_bad_rows, dropped)
    entries = read_table(entry_rows.path, ENTRY_COLUMNS)
    # Boxes of an image whose entry row was dropped are left out, not reported again.
    listed = {Path(name).stem for name in entries["Image Index"] if name}
    entries, findings = _check_entries(entries, entry_rows)
    names = entries["Image Index"].tolist()
    image_ids = [Path(name).stem for name in names]
    paths = _locate(raw_dir, names)
    sizes, rejected = scan_headers(raw_dir, image_ids, paths)
    readable = np.isin(image_ids, list(sizes))
    entries, findings = entries[readable], findings[readable]
    abnormal = findings.any(axis=1).to_numpy()
    images = sized_images(image_ids, paths, sizes).assign(
        label=np.where(abnormal, "abnormal", "normal"),
        patient_id=entries["Patient ID"].to_numpy(),
        sex=entries["Patient Gender"].map(parse_sex).to_numpy(),
        age=entries["Patient Age"].map(parse_age).to_numpy(),
        view=entries["View Position"].replace("", pd.NA).to_numpy(),
    )
    images = conform_images(images)
    targets = findings.assign(**{ABNORMAL: abnormal.astype(np.int64)}).reset_index(drop=True)
    boxes = empty_boxes()
    if (raw_dir / BBOX_FILE).exists():
        boxes = _read_boxes(RowFilter(raw_dir / BBOX_FILE, on_bad_rows, dropped), listed, images)
    return SourceTables(
        images,
        boxes,
        list(FINDINGS),
        list(IMAGE_LABELS),
        targets=targets,
        dropped=dropped,
        rejected=rejected,
    )


def _check_entries(entries: pd.DataFrame, rows: RowFilter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Valid Data_Entry rows, and their 14 finding flags (int 0/1, same index)."""
    entries = rows.require(entries, ["Image Index", "Finding Labels", "Patient ID"])
    entries = rows.unique(entries, "Image Index")
    labels = entries["Finding Labels"].str.split("|").explode().str.strip()
    allowed = [*FINDINGS, NO_FINDING]
    entries = rows.remove(
        entries,
        entries.index.isin(labels.index[~labels.isin(allowed)]),
        lambda row: (
            f"unknown finding label(s) {_unknown_labels(row['Finding Labels'], allowed)} "
            f"(allowed: {', '.join(allowed)})"
        ),
    )
    labels = labels[labels.index.isin(entries.index)]
    with_findings = labels.index[labels != NO_FINDING]
    entries = rows.remove(
        entries,
        entries.index.isin(labels.index[labels == NO_FINDING]) & entries.index.isin(with_findings),
        f"{NO_FINDING!r} together with findings",
    )
    labels = labels[labels.index.isin(entries.index) & (labels != NO_FINDING)]
    flags = pd.crosstab(labels.index, labels).reindex(
        index=entries.index, columns=FINDINGS, fill_value=0
    )
    return entries, (flags > 0).astype(np.int64).rename_axis(index=None, columns=None)


def _unknown_labels(text: str, allowed: Sequence[str]) -> list[str]:
    return [label.strip() for label in text.split("|") if label.strip() not in allowed]


def _locate(raw_dir: Path, names: Sequence[str]) -> list[str]:
    """Path of each image relative to raw_dir: images/<name> when there, else wherever it
    lies below raw_dir (found through one recursive listing); images/<name> when absent."""
    direct = raw_dir / IMAGES_DIR
    in_direct = {entry.name for entry in os.scandir(direct)} if direct.is_dir() else set()
    default = {name: f"{IMAGES_DIR}/{name}" for name in names}
    elsewhere = [name for name in names if name not in in_direct]
    if elsewhere:
        found = _index_by_name(raw_dir)
        default.update({name: found[name] for name in elsewhere if name in found})
    return [default[name] for name in names]


def _index_by_name(raw_dir: Path) -> dict[str, str]:
    index: dict[str, str] = {}
    for path in sorted(raw_dir.rglob("*")):
        if path.is_file():
            index.setdefault(path.name, path.relative_to(raw_dir).as_posix())
    return index


def _read_boxes(rows: RowFilter, listed: set[str], images: pd.DataFrame) -> pd.DataFrame:
    table = read_table(rows.path, ["Image Index", "Finding Label"])
    table = table.rename(columns=_box_columns(rows.path, list(table.columns)))
    table = rows.require(table, ["Image Index", "Finding Label"])
    table = table.assign(
        image_id=table["Image Index"].map(lambda name: Path(name).stem),
        class_name=table["Finding Label"].replace(_BOX_LABEL_SPELLINGS),
    )
    table = rows.allowed(table, "class_name", FINDINGS, "finding label")
    table = rows.known_ids(table, "image_id", listed, ENTRY_FILE)
    table = rows.positive_size(rows.numbers(table, ["x", "y", "w", "h"]), "w", "h")
    table = table[table["image_id"].isin(images["image_id"])]  # images rejected as unreadable
    table = rows.inside_images(table, images.set_index("image_id"))
    return conform_boxes(table.assign(class_id=table["class_name"].map(FINDINGS.index)))


def _box_columns(path: Path, columns: list[str]) -> dict[str, str]:
    """The box spans four fields from the one headed "Bbox [x" (the header's other three
    names are "y", "w", "h]" or blank)."""
    start = next((i for i, name in enumerate(columns) if name.lower().startswith("bbox")), None)
    if start is None or start + 4 > len(columns):
        raise AnnotationError(
            path, None, f"no 'Bbox [x,y,w,h]' column followed by 3 more; the header has {columns}"
        )
    return dict(zip(columns[start : start + 4], ["x", "y", "w", "h"]))
