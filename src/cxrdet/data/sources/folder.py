"""A user's own data: a folder of images plus a box CSV -> canonical tables.

    raw_dir/images/...            .png / .jpg / .jpeg / .dcm / .dicom, subfolders allowed;
                                  image_id = file name without extension (must be unique)
    raw_dir/annotations.csv       image_id,x,y,width,height,label   (pixels, top-left corner;
                                  label = the box's class name; an image without rows is a
                                  negative)
    raw_dir/images.csv            optional: image_id[,label][,patient_id]

Box classes are the sorted unique box labels (class_id = index). An image's label is its
images.csv label when given (non-empty), else "abnormal" / "normal" by whether it has
boxes; patient_id is its images.csv patient_id when given, else the image id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.images import IMAGE_SUFFIXES, scan_headers
from cxrdet.data.sources._csv import (
    LINE,
    OnBadRows,
    RowFilter,
    box_targets,
    read_table,
    sized_images,
)
from cxrdet.data.tables import SourceTables, conform_boxes, conform_images
from cxrdet.errors import AnnotationError

IMAGES_DIR = "images"
ANNOTATIONS_FILE = "annotations.csv"
IMAGE_TABLE_FILE = "images.csv"
BOX_COLUMNS = ["image_id", "x", "y", "width", "height", "label"]


def load(raw_dir: Path, *, on_bad_rows: OnBadRows = "raise") -> SourceTables:
    raw_dir = Path(raw_dir)
    dropped: list[tuple[str, int | None, str]] = []
    files = _list_images(raw_dir / IMAGES_DIR)
    sizes, rejected = scan_headers(raw_dir, list(files), list(files.values()))
    box_rows = RowFilter(raw_dir / ANNOTATIONS_FILE, on_bad_rows, dropped)
    boxes = _read_boxes(box_rows, files)
    images = sized_images(list(files), list(files.values()), sizes)
    boxes = boxes[boxes["image_id"].isin(sizes)]
    boxes = box_rows.inside_images(boxes, images.set_index("image_id"))

    class_names = sorted(boxes["label"].unique())
    boxes = conform_boxes(
        boxes.assign(class_name=boxes["label"], class_id=boxes["label"].map(class_names.index))
    )
    fallback = np.where(images["image_id"].isin(boxes["image_id"]), "abnormal", "normal")
    images = images.assign(label=fallback, patient_id=images["image_id"])
    if (raw_dir / IMAGE_TABLE_FILE).exists():
        images = _apply_image_table(
            RowFilter(raw_dir / IMAGE_TABLE_FILE, on_bad_rows, dropped), images, files
        )
    images = conform_images(images)
    return SourceTables(
        images,
        boxes,
        class_names,
        sorted(images["label"].unique()),
        targets=box_targets(images, boxes, class_names),
        dropped=dropped,
        rejected=rejected,
    )


def parse_annotations_csv(path: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Boxes (with class_id), image ids (annotations.csv plus images.csv beside it) and class
    names of a bare annotations.csv, checked as `load` does, without reading images."""
    path = Path(path)
    listed = list(read_table(path, BOX_COLUMNS)["image_id"])
    image_table = path.parent / IMAGE_TABLE_FILE
    if image_table.exists():
        image_rows = RowFilter(image_table, "raise", [])
        listed += list(
            image_rows.require(read_table(image_table, ["image_id"]), ["image_id"])["image_id"]
        )
    image_ids = list(dict.fromkeys(i for i in listed if i))
    boxes = _read_boxes(RowFilter(path, "raise", []), dict.fromkeys(image_ids, ""))
    class_names = sorted(boxes["label"].unique())
    return boxes.assign(class_id=boxes["label"].map(class_names.index)), image_ids, class_names


def _list_images(images_dir: Path) -> dict[str, str]:
    """image_id -> path relative to raw_dir, sorted by id; repeated ids are an error."""
    if not images_dir.is_dir():
        raise AnnotationError(images_dir, None, "image folder not found")
    files: dict[str, str] = {}
    for path in sorted(images_dir.rglob("*")):
        if (
            path.is_file()
            and path.suffix.lower() in IMAGE_SUFFIXES
            and not path.name.startswith(".")
        ):
            relative = path.relative_to(images_dir.parent).as_posix()
            if path.stem in files:
                raise AnnotationError(
                    images_dir,
                    None,
                    f"duplicate image id {path.stem!r}: {files[path.stem]} and {relative}",
                )
            files[path.stem] = relative
    return dict(sorted(files.items()))


def _read_boxes(rows: RowFilter, files: dict[str, str]) -> pd.DataFrame:
    table = read_table(rows.path, BOX_COLUMNS)
    table = rows.require(table, ["image_id", "label"])
    table = rows.known_ids(table, "image_id", files, f"{IMAGES_DIR}/")
    table = rows.numbers(table, ["x", "y", "width", "height"])
    return rows.positive_size(table.rename(columns={"width": "w", "height": "h"}))


def _apply_image_table(
    rows: RowFilter, images: pd.DataFrame, files: dict[str, str]
) -> pd.DataFrame:
    """Labels and patient ids from images.csv, where its cells are not empty."""
    table = read_table(rows.path, ["image_id"])
    table = rows.require(table, ["image_id"])
    table = rows.known_ids(table, "image_id", files, f"{IMAGES_DIR}/")
    table = rows.unique(table, "image_id").set_index("image_id").drop(columns=LINE)
    for column in ("label", "patient_id"):
        if column in table.columns:
            given = images["image_id"].map(table[column]).fillna("")
            images = images.assign(**{column: given.where(given != "", images[column])})
    return images
