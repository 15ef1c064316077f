"""Dataset sources: exact round trips of the synthetic data, malformed rows, bad image files."""

from __future__ import annotations

import csv
import io
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from cxrdet.data.sources import SOURCES, load_source
from cxrdet.data.sources.synthetic import DemoSpec, synthesize
from cxrdet.data.sources.vinbigdata import CLASS_NAMES, fuse_reader_boxes, parse_train_csv
from cxrdet.data.tables import BOX_COLUMNS, SourceTables, conform_boxes
from cxrdet.errors import AnnotationError

# 14 VinBigData images cover each of its 7 pixel encodings twice.
SPEC = DemoSpec(
    seed=11, image_size=96, rsna_images=12, vinbigdata_images=14, nih_images=20, folder_images=6
)
FORMATS = ["rsna", "vinbigdata", "nih", "folder"]

Row = dict[str, str | int]  # a CSV row by column name, plus its line number as "_line"
Where = Callable[[Row, list[Row]], bool]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, SourceTables]]:
    root = tmp_path_factory.mktemp("sources_demo")
    return root, synthesize(root, SPEC, progress=False)


def copy_of(demo: tuple[Path, dict], fmt: str, tmp_path: Path) -> Path:
    shutil.copytree(demo[0] / fmt, tmp_path / fmt)
    return tmp_path / fmt


def by_id(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("image_id").reset_index(drop=True)


def sorted_boxes(boxes: pd.DataFrame) -> pd.DataFrame:
    return boxes.sort_values(list(BOX_COLUMNS)).reset_index(drop=True)


def box_set(boxes: pd.DataFrame) -> set[tuple]:
    return set(
        boxes[["image_id", "x", "y", "w", "h", "class_id"]].itertuples(index=False, name=None)
    )


def edit_csv(path: Path, column: str, value: str, where: Where = lambda row, rows: True) -> int:
    """Set `column` to `value` on the first data row matching `where(row, all_rows)`; the
    other lines stay byte-identical. Returns the edited 1-based line (header = 1)."""
    lines = path.read_text().splitlines()
    header = next(csv.reader([lines[0]]))
    rows = [
        dict(zip(header, next(csv.reader([line]))), _line=n)
        for n, line in enumerate(lines[1:], start=2)
    ]
    for number, row in enumerate(rows, start=2):
        if where(row, rows):
            fields = next(csv.reader([lines[number - 1]]))
            fields[header.index(column)] = value
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(fields)
            lines[number - 1] = buffer.getvalue()
            path.write_text("\n".join(lines) + "\n")
            return number
    raise AssertionError(f"{path}: no row matches the test's condition")


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_equals_the_synthetic_truth(demo, fmt):
    truth = demo[1][fmt]
    tables = load_source(fmt, demo[0] / fmt)
    assert_frame_equal(by_id(tables.images[truth.images.columns]), by_id(truth.images))
    assert_frame_equal(sorted_boxes(tables.boxes), sorted_boxes(truth.boxes), check_exact=True)
    assert tables.class_names == truth.class_names
    assert tables.image_labels == truth.image_labels
    assert tables.rejected == [] and tables.dropped == []
    assert len(truth.boxes) > 0
    if truth.targets is not None:
        order = tables.images["image_id"].tolist()
        expected = (
            truth.targets.set_axis(truth.images["image_id"]).loc[order].reset_index(drop=True)
        )
        assert_frame_equal(tables.targets, expected)


def test_rsna_reads_patient_metadata_from_dicom(demo):
    images = load_source("rsna", demo[0] / "rsna").images
    truth = demo[1]["rsna"].images
    assert_frame_equal(
        by_id(images[["image_id", "sex", "age", "view"]]),
        by_id(truth[["image_id", "sex", "age", "view"]]),
    )
    assert images["age"].notna().all()  # bare "47" ages parsed


def test_nih_reads_metadata_from_data_entry(demo, tmp_path):
    raw = copy_of(demo, "nih", tmp_path)
    age_line = edit_csv(
        raw / "Data_Entry_2017.csv", "Patient Age", "058Y"
    )  # the older release's format
    entry = pd.read_csv(raw / "Data_Entry_2017.csv", dtype=str, index_col=False)
    images = load_source("nih", raw).images
    assert list(images["image_id"]) == [name.removesuffix(".png") for name in entry["Image Index"]]
    assert list(images["patient_id"]) == list(entry["Patient ID"])
    assert list(images["sex"]) == list(entry["Patient Gender"])
    assert list(images["view"]) == list(entry["View Position"])
    assert images["age"].iloc[age_line - 2] == 58
    assert list(images["age"].iloc[1:]) == [int(a) for a in entry["Patient Age"].iloc[1:]]


def test_nih_finds_images_in_subfolders(demo, tmp_path):
    raw = copy_of(demo, "nih", tmp_path)
    moved = sorted((raw / "images").glob("*.png"))[:3]
    (raw / "images_002" / "images").mkdir(parents=True)
    for path in moved:
        path.rename(raw / "images_002" / "images" / path.name)
    images = load_source("nih", raw).images.set_index("image_id")
    for path in moved:
        assert images.at[path.stem, "path"] == f"images_002/images/{path.name}"
    assert len(images) == SPEC.nih_images


def test_nih_without_box_file_has_no_boxes(demo, tmp_path):
    raw = copy_of(demo, "nih", tmp_path)
    (raw / "BBox_List_2017.csv").unlink()
    tables = load_source("nih", raw)
    assert tables.boxes.empty and len(tables.images) == SPEC.nih_images


@pytest.mark.parametrize("fmt", ["vinbigdata", "folder"])
def test_box_sources_give_per_class_targets(demo, fmt):
    tables = load_source(fmt, demo[0] / fmt)
    assert list(tables.targets.columns) == [*tables.class_names, "Abnormal"]
    for row, image_id in enumerate(tables.images["image_id"]):
        classes = set(tables.boxes.loc[tables.boxes["image_id"] == image_id, "class_id"])
        assert tables.targets.iloc[row, :-1].to_numpy().nonzero()[0].tolist() == sorted(classes)
        assert tables.targets.iloc[row, -1] == int(bool(classes))


# ------------------------------------------------------------------ malformed rows

LABELS = "stage_2_train_labels.csv"
CLASSES = "stage_2_detailed_class_info.csv"


def has_box(row: Row, rows: list[Row]) -> bool:
    return row.get("Target") == "1"


def without_box(row: Row, rows: list[Row]) -> bool:
    return row.get("Target") == "0"


def finding(row: Row, rows: list[Row]) -> bool:
    return row["class_id"] not in ("14", "")


def patient_rows(row: Row, rows: list[Row]) -> int:
    return sum(other["patientId"] == row["patientId"] for other in rows)


def nih_normal(row: Row, rows: list[Row]) -> bool:
    return row["Finding Labels"] == "No Finding"


# (format, file, column, new value, which row, problem pattern, boxes the drop loses)
ROW_CASES = {
    "rsna non-numeric x": (
        "rsna",
        LABELS,
        "x",
        "abc",
        has_box,
        r"x is not a finite number: 'abc'",
        1,
    ),
    "rsna NaN width": (
        "rsna",
        LABELS,
        "width",
        "NaN",
        has_box,
        r"width is not a finite number: 'NaN'",
        1,
    ),
    "rsna negative height": (
        "rsna",
        LABELS,
        "height",
        "-5",
        has_box,
        r"height must be > 0, got -5",
        1,
    ),
    "rsna zero width": ("rsna", LABELS, "width", "0", has_box, r"width must be > 0, got 0", 1),
    "rsna box outside": (
        "rsna",
        LABELS,
        "x",
        "500",
        has_box,
        r"box x=500 y=\d+ w=\d+ h=\d+ lies outside the 96x96 image",
        1,
    ),
    "rsna target 0 with box": ("rsna", LABELS, "Target", "0", has_box, r"Target 0 with a box", 1),
    "rsna target 1 without box": (
        "rsna",
        LABELS,
        "Target",
        "1",
        without_box,
        r"Target 1 without a box",
        0,
    ),
    "rsna bad target": ("rsna", LABELS, "Target", "2", without_box, r"unknown Target '2'", 0),
    "vinbigdata unknown class": (
        "vinbigdata",
        "train.csv",
        "class_id",
        "15",
        finding,
        r"unknown class_id '15'",
        1,
    ),
    "vinbigdata wrong name": (
        "vinbigdata",
        "train.csv",
        "class_name",
        "Hernia",
        finding,
        r"class_name 'Hernia' does not match class_id",
        1,
    ),
    "vinbigdata x_max < x_min": (
        "vinbigdata",
        "train.csv",
        "x_max",
        "0.5",
        finding,
        r"x_max - x_min must be > 0",
        1,
    ),
    "vinbigdata missing id": (
        "vinbigdata",
        "train.csv",
        "image_id",
        "",
        finding,
        r"missing image_id",
        1,
    ),
    "vinbigdata non-numeric": (
        "vinbigdata",
        "train.csv",
        "y_min",
        "n/a",
        finding,
        r"y_min is not a finite number",
        1,
    ),
    "vinbigdata missing coordinate": (
        "vinbigdata",
        "train.csv",
        "y_max",
        "",
        finding,
        r"missing y_max",
        1,
    ),
    "vinbigdata box outside": (
        "vinbigdata",
        "train.csv",
        "y_max",
        "9999.0",
        finding,
        r"lies outside the \d+x\d+ image",
        1,
    ),
    "nih unknown finding": (
        "nih",
        "Data_Entry_2017.csv",
        "Finding Labels",
        "Effusion|Pneumonitis",
        nih_normal,
        r"unknown finding label\(s\) \['Pneumonitis'\]",
        0,
    ),
    "nih no finding with findings": (
        "nih",
        "Data_Entry_2017.csv",
        "Finding Labels",
        "No Finding|Effusion",
        nih_normal,
        r"'No Finding' together with findings",
        0,
    ),
    "nih missing image index": (
        "nih",
        "Data_Entry_2017.csv",
        "Image Index",
        "",
        nih_normal,
        r"missing Image Index",
        0,
    ),
    "nih box unknown label": (
        "nih",
        "BBox_List_2017.csv",
        "Finding Label",
        "Pneumonitis",
        lambda r, rs: True,
        r"unknown finding label 'Pneumonitis'",
        1,
    ),
    "nih box unknown image": (
        "nih",
        "BBox_List_2017.csv",
        "Image Index",
        "99999999_000.png",
        lambda r, rs: True,
        r"unknown image id '99999999_000'",
        1,
    ),
    "nih box zero width": (
        "nih",
        "BBox_List_2017.csv",
        "w",
        "0",
        lambda r, rs: True,
        r"w must be > 0",
        1,
    ),
    "nih box non-numeric x": (
        "nih",
        "BBox_List_2017.csv",
        "Bbox [x",
        "left",
        lambda r, rs: True,
        r"x is not a finite number: 'left'",
        1,
    ),
    "folder unknown image": (
        "folder",
        "annotations.csv",
        "image_id",
        "ghost",
        lambda r, rs: True,
        r"unknown image id 'ghost'",
        1,
    ),
    "folder negative width": (
        "folder",
        "annotations.csv",
        "width",
        "-3",
        lambda r, rs: True,
        r"width must be > 0",
        1,
    ),
    "folder box outside": (
        "folder",
        "annotations.csv",
        "x",
        "95.5",
        lambda r, rs: True,
        r"lies outside the \d+x\d+ image",
        1,
    ),
    "folder NaN y": (
        "folder",
        "annotations.csv",
        "y",
        "nan",
        lambda r, rs: True,
        r"y is not a finite number: 'nan'",
        1,
    ),
    "folder missing label": (
        "folder",
        "annotations.csv",
        "label",
        "",
        lambda r, rs: True,
        r"missing label",
        1,
    ),
    "folder images.csv unknown image": (
        "folder",
        "images.csv",
        "image_id",
        "ghost",
        lambda r, rs: True,
        r"unknown image id 'ghost'",
        0,
    ),
}


# Dropping these rows makes dependent rows bad too (an RSNA class row naming a patient no
# label row has any more), so only the raise is checked.
RAISE_CASES = ROW_CASES | {
    "rsna missing id": ("rsna", LABELS, "patientId", "", without_box, r"missing patientId", 0),
}


@pytest.mark.parametrize("case", RAISE_CASES.values(), ids=RAISE_CASES.keys())
def test_malformed_row_raises_naming_file_and_line(demo, tmp_path, case):
    fmt, name, column, value, where, problem, _ = case
    raw = copy_of(demo, fmt, tmp_path)
    line = edit_csv(raw / name, column, value, where)
    with pytest.raises(AnnotationError, match=problem) as caught:
        load_source(fmt, raw)
    assert (caught.value.path, caught.value.row) == (raw / name, line)
    assert f"{raw / name}, line {line}" in str(caught.value)


@pytest.mark.parametrize("case", ROW_CASES.values(), ids=ROW_CASES.keys())
def test_drop_removes_exactly_the_bad_row(demo, tmp_path, case):
    fmt, name, column, value, where, problem, lost_boxes = case
    truth = demo[1][fmt]
    raw = copy_of(demo, fmt, tmp_path)
    line = edit_csv(raw / name, column, value, where)
    tables = load_source(fmt, raw, on_bad_rows="drop")
    assert len(tables.dropped) == 1
    file, row, message = tables.dropped[0]
    assert (file, row) == (str(raw / name), line) and pd.Series([message]).str.contains(
        problem
    ).all()
    assert len(tables.boxes) == len(truth.boxes) - lost_boxes
    assert box_set(tables.boxes) <= box_set(truth.boxes)
    # At most the edited row's image is gone (a box row may have been its only row).
    assert set(tables.images["image_id"]) <= set(truth.images["image_id"])
    assert len(tables.images) >= len(truth.images) - 1


CLASS_CASES = {
    "unknown class": ("Pneumonia", lambda r, rs: True, r"unknown class 'Pneumonia'"),
    "opacity without boxes": (
        "Lung Opacity",
        lambda r, rs: r["class"] == "Normal",
        r"class 'Lung Opacity' but no box",
    ),
    "normal with boxes": (
        "Normal",
        lambda r, rs: r["class"] == "Lung Opacity" and patient_rows(r, rs) == 1,
        r"class 'Normal' but the patient has boxes",
    ),
    "conflicting classes": (
        "Normal",
        lambda r, rs: (
            r["class"] == "Lung Opacity"
            and any(o["patientId"] == r["patientId"] and o["_line"] < r["_line"] for o in rs)
        ),
        r"conflicting classes for patient .*'Normal' here, 'Lung Opacity' on line \d+",
    ),
}


@pytest.mark.parametrize("case", CLASS_CASES.values(), ids=CLASS_CASES.keys())
def test_rsna_class_info_problems(demo, tmp_path, case):
    value, where, problem = case
    raw = copy_of(demo, "rsna", tmp_path)
    line = edit_csv(raw / CLASSES, "class", value, where)
    with pytest.raises(AnnotationError, match=problem) as caught:
        load_source("rsna", raw)
    assert (caught.value.path, caught.value.row) == (raw / CLASSES, line)
    tables = load_source("rsna", raw, on_bad_rows="drop")
    assert tables.dropped[0] == (str(raw / CLASSES), line, tables.dropped[0][2])
    # A patient left without a class loses its label rows too, each listed.
    assert all(f == str(raw / LABELS) and "has no class" in p for f, _, p in tables.dropped[1:])
    assert set(tables.images["image_id"]) <= set(demo[1]["rsna"].images["image_id"])


def test_rsna_class_row_for_unknown_patient(demo, tmp_path):
    raw = copy_of(demo, "rsna", tmp_path)
    with (raw / CLASSES).open("a") as handle:
        handle.write("nobody,Normal\n")
    line = len((raw / CLASSES).read_text().splitlines())
    with pytest.raises(AnnotationError, match=r"unknown image id 'nobody'") as caught:
        load_source("rsna", raw)
    assert caught.value.row == line
    tables = load_source("rsna", raw, on_bad_rows="drop")
    assert [row for _, row, _ in tables.dropped] == [line]
    assert len(tables.images) == SPEC.rsna_images


def test_duplicate_ids_are_bad_rows(demo, tmp_path):
    raw = copy_of(demo, "folder", tmp_path)
    first = next(csv.DictReader((raw / "images.csv").open()))["image_id"]
    line = edit_csv(raw / "images.csv", "image_id", first, lambda r, rs: r["image_id"] != first)
    with pytest.raises(
        AnnotationError, match=rf"duplicate image_id '{first}' \(first on line 2\)"
    ) as caught:
        load_source("folder", raw)
    assert caught.value.row == line


@pytest.mark.parametrize(
    "fmt, name, old, new",
    [
        ("rsna", LABELS, "Target", "target"),
        ("rsna", CLASSES, "class", "klass"),
        ("vinbigdata", "train.csv", "rad_id", "reader"),
        ("nih", "Data_Entry_2017.csv", "Finding Labels", "Findings"),
        ("nih", "BBox_List_2017.csv", "Bbox [x", "Box"),
        ("folder", "annotations.csv", "height", "h"),
    ],
)
@pytest.mark.parametrize("policy", ["raise", "drop"])
def test_missing_column_is_a_file_level_error(demo, tmp_path, fmt, name, old, new, policy):
    raw = copy_of(demo, fmt, tmp_path)
    path = raw / name
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0].replace(old, new, 1) + "".join(lines[1:]))
    with pytest.raises(AnnotationError) as caught:
        load_source(fmt, raw, on_bad_rows=policy)
    assert caught.value.path == path and caught.value.row is None


def test_missing_csv_is_a_file_level_error(demo, tmp_path):
    raw = copy_of(demo, "folder", tmp_path)
    (raw / "annotations.csv").unlink()
    with pytest.raises(AnnotationError, match="file not found") as caught:
        load_source("folder", raw)
    assert caught.value.row is None


def test_box_within_one_pixel_of_the_edge_is_clipped(demo, tmp_path):
    raw = copy_of(demo, "folder", tmp_path)
    edit_csv(raw / "annotations.csv", "x", "-0.5")
    line = edit_csv(raw / "annotations.csv", "width", "96.9")  # right edge at 96.4 in a 96 px image
    tables = load_source("folder", raw)
    row = pd.read_csv(raw / "annotations.csv").iloc[line - 2]
    box = tables.boxes[(tables.boxes["image_id"] == row["image_id"]) & (tables.boxes["x"] == 0)]
    assert box[["x", "w"]].values.tolist() == [[0.0, 96.0]]


def test_blank_lines_do_not_shift_line_numbers(demo, tmp_path):
    raw = copy_of(demo, "rsna", tmp_path)
    path = raw / LABELS
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
    line = edit_csv(path, "x", "abc", has_box)
    with pytest.raises(AnnotationError) as caught:
        load_source("rsna", raw)
    assert caught.value.row == line


# ------------------------------------------------------------------ bad image files


def test_unreadable_and_missing_dicoms_are_rejected(demo, tmp_path):
    raw = copy_of(demo, "rsna", tmp_path)
    truth = demo[1]["rsna"]
    boxed = truth.boxes["image_id"].iloc[0]
    plain = [i for i in truth.images["image_id"] if i != boxed]
    folder = raw / "stage_2_train_images"
    (folder / f"{boxed}.dcm").write_bytes((folder / f"{boxed}.dcm").read_bytes()[:-500])
    (folder / f"{plain[0]}.dcm").write_text("not a DICOM file")
    (folder / f"{plain[1]}.dcm").unlink()
    tables = load_source("rsna", raw)
    reasons = {image_id: reason for image_id, _, reason in tables.rejected}
    assert reasons.keys() == {boxed, plain[0], plain[1]}
    assert "truncated" in reasons[boxed] and "not a DICOM" in reasons[plain[0]]
    assert reasons[plain[1]] == "file not found"
    assert [path for image_id, path, _ in tables.rejected if image_id == boxed] == [
        f"stage_2_train_images/{boxed}.dcm"
    ]
    assert not set(reasons) & set(tables.images["image_id"])
    assert boxed not in set(tables.boxes["image_id"])
    assert len(tables.images) == SPEC.rsna_images - 3


@pytest.mark.parametrize(
    "fmt, pattern",
    [("vinbigdata", "train/*.dicom"), ("nih", "images/*.png"), ("folder", "images/*")],
)
def test_corrupt_image_among_good_ones_is_rejected(demo, tmp_path, fmt, pattern):
    raw = copy_of(demo, fmt, tmp_path)
    victim = sorted(raw.glob(pattern))[0]
    victim.write_bytes(b"\x00" * 10)
    tables = load_source(fmt, raw)
    assert [(image_id, path) for image_id, path, _ in tables.rejected] == [
        (victim.stem, victim.relative_to(raw).as_posix())
    ]
    assert victim.stem not in set(tables.images["image_id"]) | set(tables.boxes["image_id"])
    assert len(tables.images) == len(demo[1][fmt].images) - 1


def test_folder_duplicate_stems_are_an_error(demo, tmp_path):
    raw = copy_of(demo, "folder", tmp_path)
    first = sorted((raw / "images").glob("*.png"))[0]
    (raw / "images" / "sub").mkdir()
    shutil.copy(first, raw / "images" / "sub" / first.name)
    with pytest.raises(AnnotationError, match=f"duplicate image id '{first.stem}'"):
        load_source("folder", raw)


# ------------------------------------------------------------------------ VinBigData


def reader_boxes(boxes: list[tuple[float, float, float, float]], class_id: int = 3) -> pd.DataFrame:
    return conform_boxes(
        pd.DataFrame(
            {
                "image_id": "img",
                "x": [b[0] for b in boxes],
                "y": [b[1] for b in boxes],
                "w": [b[2] for b in boxes],
                "h": [b[3] for b in boxes],
                "class_id": class_id,
                "class_name": CLASS_NAMES[class_id],
                "reader": [f"R{i + 1}" for i in range(len(boxes))],
            }
        )
    )


IMAGE = pd.DataFrame({"image_id": ["img"], "width": [400], "height": [300]})


def test_fuse_reader_boxes_merges_jittered_readers():
    readers = [(100, 50, 80, 60), (104, 47, 78, 64), (97, 53, 85, 58)]
    fused = fuse_reader_boxes(reader_boxes(readers), IMAGE)
    assert len(fused) == 1
    box = fused.iloc[0]
    x1, y1 = [b[0] for b in readers], [b[1] for b in readers]
    x2, y2 = [b[0] + b[2] for b in readers], [b[1] + b[3] for b in readers]
    assert min(x1) <= box["x"] <= max(x1) and min(y1) <= box["y"] <= max(y1)
    assert min(x2) <= box["x"] + box["w"] <= max(x2) and min(y2) <= box["y"] + box["h"] <= max(y2)
    assert box["class_id"] == 3 and box["class_name"] == "Cardiomegaly" and pd.isna(box["reader"])
    assert list(fused.dtypes) == list(reader_boxes(readers).dtypes)


def test_fuse_keeps_classes_and_distant_boxes_apart():
    boxes = pd.concat(
        [
            reader_boxes([(10, 10, 50, 50), (12, 11, 50, 49)]),
            reader_boxes([(11, 10, 50, 50)], class_id=0),
            reader_boxes([(300, 200, 40, 40)]),
        ],
        ignore_index=True,
    )
    fused = fuse_reader_boxes(boxes, IMAGE)
    assert sorted(fused["class_id"]) == [0, 3, 3]


def test_fuse_validates_before_ensemble_boxes_can_clip():
    with pytest.raises(ValueError, match="outside the image"):
        fuse_reader_boxes(reader_boxes([(350, 10, 80, 50)]), IMAGE)


def test_load_with_fused_readers(demo):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ensemble-boxes only warns when it clips or swaps
        fused = load_source("vinbigdata", demo[0] / "vinbigdata", fuse_readers=True, fuse_iou=0.4)
    raw = demo[1]["vinbigdata"].boxes
    assert fused.boxes["reader"].isna().all()
    assert len(fused.boxes) < len(raw)
    pairs = lambda boxes: set(zip(boxes["image_id"], boxes["class_id"]))  # noqa: E731
    assert pairs(fused.boxes) == pairs(raw)


def test_parse_train_csv_needs_no_images(demo, tmp_path):
    raw = copy_of(demo, "vinbigdata", tmp_path)
    shutil.rmtree(raw / "train")
    truth = demo[1]["vinbigdata"]
    boxes, image_ids = parse_train_csv(raw / "train.csv")
    assert_frame_equal(sorted_boxes(boxes), sorted_boxes(truth.boxes), check_exact=True)
    assert sorted(image_ids) == sorted(truth.images["image_id"])
    normal = set(truth.images.loc[truth.images["label"] == "normal", "image_id"])
    assert normal == set(image_ids) - set(boxes["image_id"]) and normal


def test_parse_train_csv_drop_reports_rows(demo, tmp_path):
    raw = copy_of(demo, "vinbigdata", tmp_path)
    line = edit_csv(raw / "train.csv", "x_min", "left", finding)
    dropped: list = []
    boxes, _ = parse_train_csv(raw / "train.csv", on_bad_rows="drop", dropped=dropped)
    assert [row for _, row, _ in dropped] == [line]
    assert len(boxes) == len(demo[1]["vinbigdata"].boxes) - 1


# ------------------------------------------------------------------------ registry


def test_registry_and_load_source_errors(demo):
    assert list(SOURCES) == FORMATS
    with pytest.raises(
        ValueError,
        match="unknown dataset format 'dicomdir'; allowed: rsna, vinbigdata, nih, folder",
    ):
        load_source("dicomdir", demo[0])
    with pytest.raises(ValueError, match="format 'rsna' has no option"):
        load_source("rsna", demo[0] / "rsna", fuse_readers=True)
    with pytest.raises(ValueError, match="on_bad_rows"):
        load_source("rsna", demo[0] / "rsna", on_bad_rows="ignore")


def test_image_paths_are_relative_to_raw_dir(demo):
    for fmt in FORMATS:
        images = load_source(fmt, demo[0] / fmt).images
        assert all(
            not Path(p).is_absolute() and (demo[0] / fmt / p).is_file() for p in images["path"]
        )
        assert np.all(images["width"] > 0)
