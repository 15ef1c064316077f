"""VinBigData Chest X-ray Abnormalities Detection (2021) training data -> canonical tables.

    raw_dir/train.csv                 image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
    raw_dir/train/<image_id>.dicom

Each image was read by 3 radiologists; every reader's box is kept (reader = rad_id)
unless `fuse_readers`, which fuses them with weighted boxes fusion as the winners built
their training labels. Class 14 "No finding" rows have an empty box and give no box.
Label "abnormal" when the image has a finding, else "normal"; patient_id = image_id.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from ensemble_boxes import weighted_boxes_fusion

from cxrdet.data.images import scan_headers
from cxrdet.data.sources._csv import (
    BINARY_LABELS,
    OnBadRows,
    RowFilter,
    box_targets,
    read_table,
    sized_images,
)
from cxrdet.data.tables import SourceTables, conform_boxes, conform_images, empty_boxes

TRAIN_FILE = "train.csv"
IMAGES_DIR = "train"
CLASS_NAMES = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
]
NO_FINDING_ID = 14
NO_FINDING = "No finding"
IMAGE_LABELS = BINARY_LABELS
COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
_OFFICIAL_NAMES = {str(i): name for i, name in enumerate([*CLASS_NAMES, NO_FINDING])}


class TrainLabels(NamedTuple):
    """train.csv parsed: finding boxes (canonical, readers kept) and every image listed,
    in file order; a listed image without boxes is "No finding"."""

    boxes: pd.DataFrame
    image_ids: list[str]


def load(
    raw_dir: Path,
    *,
    on_bad_rows: OnBadRows = "raise",
    fuse_readers: bool = False,
    fuse_iou: float = 0.4,
    fuse_skip: float = 0.0,
) -> SourceTables:
    raw_dir = Path(raw_dir)
    dropped: list[tuple[str, int | None, str]] = []
    rows = RowFilter(raw_dir / TRAIN_FILE, on_bad_rows, dropped)
    boxes, image_ids = _parse(rows)
    paths = [f"{IMAGES_DIR}/{image_id}.dicom" for image_id in image_ids]
    sizes, rejected = scan_headers(raw_dir, image_ids, paths)
    images = sized_images(image_ids, paths, sizes)
    images["patient_id"] = images["image_id"]
    boxes = boxes[boxes["image_id"].isin(sizes)]
    boxes = conform_boxes(rows.inside_images(boxes, images.set_index("image_id")))
    if fuse_readers:
        boxes = fuse_reader_boxes(boxes, images, iou_thr=fuse_iou, skip_box_thr=fuse_skip)
    abnormal = images["image_id"].isin(boxes["image_id"])
    images = conform_images(images.assign(label=np.where(abnormal, "abnormal", "normal")))
    return SourceTables(
        images,
        boxes,
        list(CLASS_NAMES),
        list(IMAGE_LABELS),
        targets=box_targets(images, boxes, CLASS_NAMES),
        dropped=dropped,
        rejected=rejected,
    )


def parse_train_csv(
    path: Path, *, on_bad_rows: OnBadRows = "raise", dropped: list | None = None
) -> TrainLabels:
    """Read a VinBigData train.csv without touching image files (for truth files).

    Returns (boxes, image_ids): canonical boxes in pixels, one per finding row and
    reader, not checked against image sizes; and every image id the file lists, in order
    of first appearance. Rows dropped under on_bad_rows="drop" are appended to `dropped`
    when given, as (file, line, problem).
    """
    rows = RowFilter(Path(path), on_bad_rows, [] if dropped is None else dropped)
    boxes, image_ids = _parse(rows)
    return TrainLabels(conform_boxes(boxes), image_ids)


def fuse_reader_boxes(
    boxes: pd.DataFrame, images: pd.DataFrame, iou_thr: float = 0.4, skip_box_thr: float = 0.0
) -> pd.DataFrame:
    """Fuse the readers' boxes per image and class with weighted boxes fusion.

    Canonical boxes in, canonical boxes out (reader <NA>). Each reader is one WBF
    "model" with all scores 1; coordinates are normalised by the image size (`images`:
    image_id, width, height) and checked (0 <= x1 < x2 <= 1, same for y) first, since
    ensemble-boxes only warns and clips. Boxes without a reader count as one reader.
    """
    if boxes.empty:
        return empty_boxes()
    sizes = images.set_index("image_id")[["width", "height"]]
    unknown = sorted(set(boxes["image_id"]) - set(sizes.index))
    if unknown:
        raise ValueError(f"boxes name images without a size: {unknown[:5]}")
    names = dict(zip(boxes["class_id"], boxes["class_name"]))
    fused = [
        _fuse_image(str(image_id), group, sizes.loc[image_id], iou_thr, skip_box_thr, names)
        for image_id, group in boxes.groupby("image_id", sort=False)
    ]
    return conform_boxes(pd.concat(fused, ignore_index=True))


def _fuse_image(
    image_id: str,
    group: pd.DataFrame,
    size: pd.Series,
    iou_thr: float,
    skip_box_thr: float,
    names: dict[int, str],
) -> pd.DataFrame:
    scale = np.array([size["width"], size["height"]] * 2, dtype=float)
    xyxy = group[["x", "y", "w", "h"]].to_numpy(dtype=float)
    xyxy[:, 2:] += xyxy[:, :2]
    xyxy /= scale
    valid = (xyxy[:, 0] >= 0) & (xyxy[:, 1] >= 0) & (xyxy[:, 2] <= 1) & (xyxy[:, 3] <= 1)
    valid &= (xyxy[:, 0] < xyxy[:, 2]) & (xyxy[:, 1] < xyxy[:, 3])
    if not valid.all():
        raise ValueError(
            f"image {image_id!r}: boxes outside the image or without area cannot be fused"
        )
    readers = group["reader"].astype("string").fillna("").to_numpy()
    per_reader = [readers == reader for reader in dict.fromkeys(readers)]
    labels = group["class_id"].to_numpy()
    fused, _scores, classes = weighted_boxes_fusion(
        [xyxy[mask] for mask in per_reader],
        [np.ones(int(mask.sum())) for mask in per_reader],
        [labels[mask] for mask in per_reader],
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
    )
    fused = np.asarray(fused, dtype=float) * scale
    class_ids = np.asarray(classes).astype(int)
    return pd.DataFrame(
        {
            "image_id": image_id,
            "x": fused[:, 0],
            "y": fused[:, 1],
            "w": fused[:, 2] - fused[:, 0],
            "h": fused[:, 3] - fused[:, 1],
            "class_id": class_ids,
            "class_name": [names[c] for c in class_ids],
            "reader": pd.NA,
        }
    )


def _parse(rows: RowFilter) -> tuple[pd.DataFrame, list[str]]:
    """Finding boxes (x, y, w, h; not yet checked against image sizes) and the image ids."""
    table = read_table(rows.path, COLUMNS)
    table = rows.require(table, ["image_id"])
    table = rows.allowed(table, "class_id", list(_OFFICIAL_NAMES), "class_id")
    table = rows.remove(
        table,
        table["class_name"] != table["class_id"].map(_OFFICIAL_NAMES),
        lambda row: (
            f"class_name {row['class_name']!r} does not match class_id {row['class_id']} "
            f"(officially {_OFFICIAL_NAMES[row['class_id']]!r})"
        ),
    )
    image_ids = table["image_id"].drop_duplicates().tolist()
    findings = table[table["class_id"] != str(NO_FINDING_ID)]
    findings = rows.numbers(findings, ["x_min", "y_min", "x_max", "y_max"])
    findings = findings.assign(
        x=findings["x_min"],
        y=findings["y_min"],
        w=findings["x_max"] - findings["x_min"],
        h=findings["y_max"] - findings["y_min"],
        class_id=findings["class_id"].astype(int),
        reader=findings["rad_id"].replace("", pd.NA),
    )
    findings = rows.positive_size(findings, "x_max - x_min", "y_max - y_min")
    return findings, image_ids
