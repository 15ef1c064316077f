"""RSNA Pneumonia Detection Challenge (2018) training data -> canonical tables.

    raw_dir/stage_2_train_labels.csv          patientId,x,y,width,height,Target (one row per
                                              box; a patient without boxes: one row, empty
                                              box, Target 0)
    raw_dir/stage_2_detailed_class_info.csv   patientId,class (rows repeat once per box)
    raw_dir/stage_2_train_images/<patientId>.dcm

Image id = patientId; label = the patient's class; sex, age, view and patient_id
(PatientID, else patientId) come from the DICOM header.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrdet.data.dicom import DicomHeader, read_dicom_header
from cxrdet.data.images import scan_headers
from cxrdet.data.sources._csv import LINE, OnBadRows, RowFilter, read_table
from cxrdet.data.tables import SourceTables, conform_boxes, conform_images

LABELS_FILE = "stage_2_train_labels.csv"
CLASS_INFO_FILE = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
NORMAL = "Normal"
NOT_NORMAL = "No Lung Opacity / Not Normal"
OPACITY = "Lung Opacity"
IMAGE_LABELS = [NORMAL, NOT_NORMAL, OPACITY]
CLASS_NAMES = [OPACITY]
BOX_FIELDS = ["x", "y", "width", "height"]


def load(raw_dir: Path, *, on_bad_rows: OnBadRows = "raise") -> SourceTables:
    raw_dir = Path(raw_dir)
    dropped: list[tuple[str, int | None, str]] = []
    label_rows = RowFilter(raw_dir / LABELS_FILE, on_bad_rows, dropped)
    labels = read_table(label_rows.path, ["patientId", *BOX_FIELDS, "Target"])
    listed = set(labels["patientId"]) - {""}
    labels, boxes = _check_labels(labels, label_rows)
    class_rows = RowFilter(raw_dir / CLASS_INFO_FILE, on_bad_rows, dropped)
    classes = _read_classes(class_rows, listed, labels, set(boxes["patientId"]))

    labels = label_rows.remove(
        labels,
        ~labels["patientId"].isin(classes.index),
        lambda row: f"patientId {row['patientId']!r} has no class in {CLASS_INFO_FILE}",
    )
    patients = labels["patientId"].drop_duplicates().tolist()
    paths = [f"{IMAGES_DIR}/{patient}.dcm" for patient in patients]
    headers, rejected = scan_headers(raw_dir, patients, paths, read_dicom_header)
    images = _images_table(patients, paths, headers, classes)

    boxes = boxes[boxes["patientId"].isin(images["image_id"])].rename(
        columns={"patientId": "image_id"}
    )
    boxes = label_rows.inside_images(boxes, images.set_index("image_id")[["width", "height"]])
    boxes = conform_boxes(boxes.assign(class_id=0, class_name=OPACITY))
    return SourceTables(
        images, boxes, list(CLASS_NAMES), list(IMAGE_LABELS), dropped=dropped, rejected=rejected
    )


def parse_labels_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Boxes (image_id, x, y, w, h) and every patientId of a bare stage_2_train_labels.csv,
    with the same row checks as `load`, without reading images (for scoring submissions)."""
    rows = RowFilter(Path(path), "raise", [])
    labels, boxes = _check_labels(read_table(rows.path, ["patientId", *BOX_FIELDS, "Target"]), rows)
    boxes = boxes.rename(columns={"patientId": "image_id"})[["image_id", "x", "y", "w", "h"]]
    return boxes, labels["patientId"].unique().tolist()


def _check_labels(labels: pd.DataFrame, rows: RowFilter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Valid label rows, and the box rows among them with numeric x, y, w, h."""
    labels = rows.require(labels, ["patientId"])
    labels = rows.allowed(labels, "Target", ["0", "1"], "Target")
    given = labels[BOX_FIELDS] != ""
    labels = rows.remove(
        labels,
        given.any(axis=1) & ~given.all(axis=1),
        "x, y, width and height must be all given or all empty",
    )
    labels = rows.remove(
        labels, (labels["Target"] == "1") & ~_has_box(labels), "Target 1 without a box"
    )
    labels = rows.remove(
        labels, (labels["Target"] == "0") & _has_box(labels), "Target 0 with a box"
    )

    boxes = rows.numbers(labels[labels["Target"] == "1"], BOX_FIELDS)
    boxes = rows.positive_size(boxes.rename(columns={"width": "w", "height": "h"}))
    # A patient whose only box row was dropped disappears with it (its class says boxes).
    labels = labels[(labels["Target"] == "0") | labels[LINE].isin(boxes[LINE])]
    return labels, boxes


def _has_box(labels: pd.DataFrame) -> pd.Series:
    return (labels[BOX_FIELDS] != "").all(axis=1)


def _read_classes(
    rows: RowFilter, listed: set[str], labels: pd.DataFrame, with_boxes: set[str]
) -> pd.Series:
    """One class per patient (index patientId), consistent with the patient's boxes."""
    info = read_table(rows.path, ["patientId", "class"])
    info = rows.require(info, ["patientId", "class"])
    info = rows.allowed(info, "class", IMAGE_LABELS, "class")
    info = rows.known_ids(info, "patientId", listed, LABELS_FILE)
    info = info.drop_duplicates(["patientId", "class"])  # rows repeat once per box
    first = info.drop_duplicates("patientId").set_index("patientId")
    info = rows.remove(
        info,
        info.duplicated("patientId"),
        lambda row: (
            f"conflicting classes for patient {row['patientId']!r}: {row['class']!r} here, "
            f"{first.at[row['patientId'], 'class']!r} on line {first.at[row['patientId'], LINE]}"
        ),
    )
    info = info[
        info["patientId"].isin(labels["patientId"])
    ]  # patients whose label rows were dropped
    boxed = info["patientId"].isin(with_boxes)
    info = rows.remove(
        info, (info["class"] == OPACITY) & ~boxed, f"class {OPACITY!r} but no box in {LABELS_FILE}"
    )
    info = rows.remove(
        info,
        (info["class"] != OPACITY) & info["patientId"].isin(with_boxes),
        lambda row: f"class {row['class']!r} but the patient has boxes in {LABELS_FILE}",
    )
    return info.set_index("patientId")["class"]


def _images_table(
    patients: list[str], paths: list[str], headers: dict[str, DicomHeader], classes: pd.Series
) -> pd.DataFrame:
    records = [
        {
            "image_id": patient,
            "path": path,
            "width": headers[patient].columns,
            "height": headers[patient].rows,
            "label": classes[patient],
            "patient_id": headers[patient].patient_id or patient,
            "sex": headers[patient].sex,
            "age": headers[patient].age,
            "view": headers[patient].view,
        }
        for patient, path in zip(patients, paths)
        if patient in headers
    ]
    columns = ["image_id", "path", "width", "height", "label", "patient_id", "sex", "age", "view"]
    return conform_images(pd.DataFrame.from_records(records, columns=columns))
