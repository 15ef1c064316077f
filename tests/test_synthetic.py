"""The synthetic demo data: real on-disk layouts, truth tables that match the files, signal."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from cxrdet.data.sources.synthetic import (
    NIH_BBOX_HEADER,
    NIH_ENTRY_HEADER,
    NIH_FINDINGS,
    NIH_TARGETS,
    RSNA_LABELS,
    VINBIG_CLASSES,
    VINBIG_VARIANTS,
    DemoSpec,
    render_chest,
    sample_anatomy,
    synthesize,
)
from cxrdet.data.tables import BOX_COLUMNS, IMAGE_COLUMNS
from cxrdet.viz import draw_boxes, sample_grid

SPEC = DemoSpec(
    seed=11, image_size=128, rsna_images=12, vinbigdata_images=8, nih_images=20, folder_images=6
)
FORMATS = ("rsna", "vinbigdata", "nih", "folder")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, synthesize(out, SPEC, progress=False)


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def read_pixels(path: Path) -> np.ndarray:
    if path.suffix in (".dcm", ".dicom"):
        return pydicom.dcmread(path).pixel_array
    return np.asarray(Image.open(path))


def iou(a: pd.Series, b: pd.Series) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    return inter / (a.w * a.h + b.w * b.h - inter)


# ----------------------------------------------------------------- layout, determinism


def test_layout_and_tables(demo):
    out, tables = demo
    assert set(tables) == set(FORMATS)
    for name in (
        "rsna/stage_2_train_labels.csv",
        "rsna/stage_2_detailed_class_info.csv",
        "vinbigdata/train.csv",
        "nih/Data_Entry_2017.csv",
        "nih/BBox_List_2017.csv",
        "folder/annotations.csv",
        "folder/images.csv",
        "samples.png",
    ):
        assert (out / name).is_file(), name
    image_dirs = {
        "rsna": "stage_2_train_images",
        "vinbigdata": "train",
        "nih": "images",
        "folder": "images",
    }
    for fmt, table in tables.items():
        images = table.images
        assert list(images.columns[: len(IMAGE_COLUMNS)]) == list(IMAGE_COLUMNS)
        assert list(table.boxes.columns) == list(BOX_COLUMNS)
        assert images["image_id"].is_unique
        assert all((out / fmt / path).is_file() for path in images["path"])
        assert len(list((out / fmt / image_dirs[fmt]).iterdir())) == len(images)
        assert all(images["path"].str.startswith(image_dirs[fmt] + "/"))
    assert (
        len(tables["rsna"].images) == SPEC.rsna_images
        and len(tables["nih"].images) == SPEC.nih_images
    )
    assert Image.open(out / "samples.png").format == "PNG"


def test_same_seed_gives_identical_files(demo, tmp_path):
    out, _ = demo
    synthesize(tmp_path, SPEC, progress=False)
    first, second = all_files(out), all_files(tmp_path)
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)


def test_rerun_replaces_stale_files(tmp_path):
    small = DemoSpec(
        seed=3, image_size=64, rsna_images=8, vinbigdata_images=8, nih_images=8, folder_images=4
    )
    synthesize(tmp_path, DemoSpec(**{**small.__dict__, "folder_images": 6}), progress=False)
    tables = synthesize(tmp_path, small, progress=False)
    assert len(list((tmp_path / "folder/images").iterdir())) == len(tables["folder"].images) == 4


def test_different_seed_gives_different_data(demo, tmp_path):
    out, tables = demo
    other = synthesize(tmp_path, DemoSpec(**{**SPEC.__dict__, "seed": 12}), progress=False)
    assert (out / "rsna/stage_2_train_labels.csv").read_bytes() != (
        tmp_path / "rsna/stage_2_train_labels.csv"
    ).read_bytes()
    for fmt in ("nih", "folder"):  # same file names, different pixels
        path = tables[fmt].images["path"].iloc[0]
        assert path == other[fmt].images["path"].iloc[0]
        assert not np.array_equal(read_pixels(out / fmt / path), read_pixels(tmp_path / fmt / path))


# --------------------------------------------------------------------------- RSNA


def test_rsna_csvs_match_truth(demo):
    out, tables = demo
    truth = tables["rsna"]
    labels = pd.read_csv(out / "rsna/stage_2_train_labels.csv")
    assert list(labels.columns) == ["patientId", "x", "y", "width", "height", "Target"]
    negatives = labels[labels["Target"] == 0]
    assert negatives[["x", "y", "width", "height"]].isna().all().all()
    assert negatives["patientId"].is_unique
    positives = labels[labels["Target"] == 1]
    expected = truth.boxes[["image_id", "x", "y", "w", "h"]].to_numpy().tolist()
    assert positives[["patientId", "x", "y", "width", "height"]].to_numpy().tolist() == expected
    assert set(truth.boxes["class_name"]) == {"Lung Opacity"} and set(truth.boxes["class_id"]) == {
        0
    }
    assert truth.boxes["reader"].isna().all()

    classes = pd.read_csv(out / "rsna/stage_2_detailed_class_info.csv")
    assert list(classes.columns) == ["patientId", "class"]
    per_patient = classes.groupby("patientId").size()
    box_counts = truth.boxes.groupby("image_id").size().reindex(per_patient.index, fill_value=0)
    assert (per_patient == box_counts.clip(lower=1)).all()  # one class row per box, as Kaggle's
    first = classes.drop_duplicates("patientId").set_index("patientId")["class"]
    assert first.to_dict() == truth.images.set_index("image_id")["label"].to_dict()
    assert set(truth.images["label"]) == set(RSNA_LABELS) and truth.image_labels == RSNA_LABELS
    opacity_ids = set(truth.images.loc[truth.images["label"] == "Lung Opacity", "image_id"])
    assert set(truth.boxes["image_id"]) == opacity_ids
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i)
        for i in truth.images["image_id"]
    )


def test_rsna_dicom_tags_and_pixels(demo):
    out, tables = demo
    for row in tables["rsna"].images.itertuples():
        ds = pydicom.dcmread(out / "rsna" / row.path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.PatientID == row.image_id and ds.SOPInstanceUID
        assert ds.PatientSex == row.sex and ds.ViewPosition == row.view in ("PA", "AP")
        assert ds.PatientAge == str(row.age) and re.fullmatch(r"\d+", ds.PatientAge)
        assert (ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation) == (
            "CR",
            "CHEST",
            "MONOCHROME2",
        )
        assert (ds.BitsStored, ds.SamplesPerPixel, ds.Rows, ds.Columns) == (
            8,
            1,
            row.height,
            row.width,
        )
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint8 and pixels.shape == (row.height, row.width)


# --------------------------------------------------------------------- VinBigData


def test_vinbigdata_files_cover_every_pixel_variant(demo):
    out, tables = demo
    seen = set()
    for row in tables["vinbigdata"].images.itertuples():
        ds = pydicom.dcmread(out / "vinbigdata" / row.path)
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) == (row.height, row.width)
        assert pixels.dtype == (np.uint8 if ds.BitsStored == 8 else np.uint16)
        assert int(pixels.max()) < 2**ds.BitsStored
        seen.add(
            (
                ds.file_meta.TransferSyntaxUID,
                ds.PhotometricInterpretation,
                ds.BitsStored,
                "RescaleSlope" in ds,
                "WindowCenter" in ds,
            )
        )
    expected = {(v.syntax, v.photometric, v.bits, v.rescale, v.window) for v in VINBIG_VARIANTS}
    assert seen == expected
    assert sum(syntax.is_compressed for syntax, *_ in seen) >= 3  # RLE, JPEG 2000, JPEG baseline
    assert {"MONOCHROME1", "MONOCHROME2"} <= {photometric for _, photometric, *_ in seen}
    assert {12, 16} <= {bits for _, _, bits, *_ in seen}
    sizes = tables["vinbigdata"].images[["width", "height"]]
    assert (sizes["width"] != sizes["height"]).any()


def test_vinbigdata_csv_matches_truth_with_three_readers(demo):
    out, tables = demo
    truth = tables["vinbigdata"]
    rows = pd.read_csv(out / "vinbigdata/train.csv")
    assert list(rows.columns) == [
        "image_id",
        "class_name",
        "class_id",
        "rad_id",
        "x_min",
        "y_min",
        "x_max",
        "y_max",
    ]
    readers = rows.groupby("image_id")["rad_id"].agg(lambda r: sorted(set(r)))
    assert all(len(r) == 3 and all(re.fullmatch(r"R([1-9]|1[0-7])", x) for x in r) for r in readers)
    assert set(readers.index) == set(truth.images["image_id"])

    empty = rows[rows["class_id"] == 14]
    assert (empty["class_name"] == "No finding").all()
    assert empty[["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    marked = rows[rows["class_id"] != 14]
    assert (marked["class_name"] == [VINBIG_CLASSES[i] for i in marked["class_id"]]).all()
    from_csv = pd.DataFrame(
        {
            "image_id": marked["image_id"],
            "x": marked["x_min"],
            "y": marked["y_min"],
            "w": marked["x_max"] - marked["x_min"],
            "h": marked["y_max"] - marked["y_min"],
            "class_id": marked["class_id"],
            "reader": marked["rad_id"],
        }
    )
    expected = truth.boxes[["image_id", "x", "y", "w", "h", "class_id", "reader"]]
    assert from_csv.to_numpy().tolist() == expected.to_numpy().tolist()

    abnormal = set(truth.boxes["image_id"])
    labels = truth.images.set_index("image_id")["label"]
    assert all((labels[i] == "abnormal") == (i in abnormal) for i in labels.index)
    assert set(labels) == {"normal", "abnormal"} and truth.class_names == VINBIG_CLASSES
    assert (truth.images["patient_id"] == truth.images["image_id"]).all()


def test_vinbigdata_readers_agree(demo):
    _, tables = demo
    for (_, _), group in tables["vinbigdata"].boxes.groupby(["image_id", "class_id"]):
        for reader, own in group.groupby("reader"):
            others = group[group["reader"] != reader]
            for box in own.itertuples():
                if len(others):
                    assert max(iou(box, other) for other in others.itertuples()) > 0.5


# ---------------------------------------------------------------------------- NIH


def test_nih_headers_and_entries(demo):
    out, tables = demo
    truth = tables["nih"]
    assert (out / "nih/Data_Entry_2017.csv").read_text().splitlines()[0] == NIH_ENTRY_HEADER
    assert (out / "nih/BBox_List_2017.csv").read_text().splitlines()[0] == NIH_BBOX_HEADER
    entries = pd.read_csv(out / "nih/Data_Entry_2017.csv")
    assert list(entries.columns) == [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
        "Unnamed: 11",
    ]
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", name) for name in entries["Image Index"])
    assert (entries["Image Index"].str[:-4] == truth.images["image_id"]).all()
    assert (entries["Patient ID"].astype(str) == truth.images["patient_id"]).all()
    assert entries.groupby("Patient ID").size().max() > 1  # follow-ups
    findings = entries["Finding Labels"].str.split("|")
    assert all(set(f) <= set(NIH_FINDINGS) or f == ["No Finding"] for f in findings)
    targets = truth.targets
    assert list(targets.columns) == NIH_TARGETS and targets.index.equals(truth.images.index)
    for name in NIH_FINDINGS:
        assert (targets[name] == findings.apply(lambda f, n=name: int(n in f))).all()
    assert (targets["Abnormal"] == (truth.images["label"] == "abnormal").astype(int)).all()
    assert set(truth.images["label"]) == {"normal", "abnormal"}


def test_nih_boxes_and_pngs(demo):
    out, tables = demo
    truth = tables["nih"]
    boxes = pd.read_csv(out / "nih/BBox_List_2017.csv")
    assert list(boxes.columns[:6]) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    assert len(boxes) == len(truth.boxes) > 0
    names = boxes["Finding Label"].replace({"Infiltrate": "Infiltration"})
    assert (names == truth.boxes["class_name"]).all()
    assert (truth.boxes["class_id"] == [NIH_FINDINGS.index(n) for n in names]).all()
    assert (
        boxes[["Bbox [x", "y", "w", "h]"]].to_numpy().tolist()
        == truth.boxes[["x", "y", "w", "h"]].to_numpy().tolist()
    )
    for row in truth.images.itertuples():
        with Image.open(out / "nih" / row.path) as image:
            assert image.mode == "L" and image.size == (row.width, row.height)


# ------------------------------------------------------------------------- folder


def test_folder_files_and_csvs(demo):
    out, tables = demo
    truth = tables["folder"]
    assert {Path(p).suffix for p in truth.images["path"]} == {".png", ".jpg", ".dcm"}
    assert (truth.images["image_id"] == [Path(p).stem for p in truth.images["path"]]).all()
    annotations = pd.read_csv(out / "folder/annotations.csv")
    assert list(annotations.columns) == ["image_id", "x", "y", "width", "height", "label"]
    assert (
        annotations[["image_id", "x", "y", "width", "height", "label"]].to_numpy().tolist()
        == truth.boxes[["image_id", "x", "y", "w", "h", "class_name"]].to_numpy().tolist()
    )
    assert truth.class_names == sorted(set(annotations["label"])) == ["nodule", "opacity"]
    listed = pd.read_csv(out / "folder/images.csv")
    assert (
        listed.to_numpy().tolist()
        == truth.images[["image_id", "label", "patient_id"]].to_numpy().tolist()
    )
    assert truth.image_labels == ["abnormal", "normal"]
    for row in truth.images.itertuples():
        assert read_pixels(out / "folder" / row.path).shape == (row.height, row.width)


# ---------------------------------------------------------------- boxes and signal


def test_boxes_lie_inside_their_images(demo):
    _, tables = demo
    for fmt, table in tables.items():
        joined = table.boxes.merge(table.images[["image_id", "width", "height"]], on="image_id")
        assert len(joined) == len(table.boxes), fmt
        assert (
            (joined["x"] >= 0) & (joined["y"] >= 0) & (joined["w"] > 0) & (joined["h"] > 0)
        ).all(), fmt
        assert (
            (joined["x"] + joined["w"] <= joined["width"])
            & (joined["y"] + joined["h"] <= joined["height"])
        ).all(), fmt


@pytest.mark.parametrize("kind", ["opacity", "faint_opacity", "nodule", "mass", "atelectasis"])
def test_lung_lesions_sit_in_the_lungs_and_are_brighter(kind):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        chest = render_chest(sample_anatomy(rng), rng, 128, 144, [kind, kind])
        for lesion in chest.lesions:
            assert lesion.mask.any() and not (lesion.mask & ~chest.lungs).any()
            x, y, w, h = lesion.box
            assert lesion.mask[y : y + h, x : x + w].sum() == lesion.mask.sum()
            ring = ndimage.binary_dilation(lesion.mask, iterations=6) & ~lesion.mask & chest.lungs
            assert chest.image[lesion.mask].mean() > chest.image[ring].mean() + 0.02


def test_rsna_opacity_boxes_are_brighter_than_the_lungs_in_the_files(demo):
    """The signal survives encoding: box pixels outshine the same place in normal images."""
    out, tables = demo
    truth = tables["rsna"]
    normal = [
        read_pixels(out / "rsna" / p).astype(float)
        for p in truth.images.loc[truth.images["label"] == "Normal", "path"]
    ]
    paths = truth.images.set_index("image_id")["path"]
    for box in truth.boxes.itertuples():
        pixels = read_pixels(out / "rsna" / paths[box.image_id]).astype(float)
        window = np.s_[int(box.y) : int(box.y + box.h), int(box.x) : int(box.x + box.w)]
        assert pixels[window].mean() > np.mean([image[window].mean() for image in normal]) + 5


def test_findings_kinds_and_image_look():
    rng = np.random.default_rng(0)
    chest = render_chest(sample_anatomy(rng), rng, 128, 128, [])
    image = chest.image
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    lungs, outside = image[chest.lungs].mean(), image[:, :4].mean()
    mediastinum = image[40:80, 60:68].mean()
    assert outside < lungs < mediastinum  # dark air, grey lungs, bright mediastinum
    with pytest.raises(ValueError, match="unknown finding"):
        render_chest(sample_anatomy(rng), rng, 64, 64, ["tumour"])


# ---------------------------------------------------------------------------- viz


def test_draw_boxes_and_grid(tmp_path):
    image = np.full((64, 80), 100, np.uint8)
    boxes = pd.DataFrame(
        {
            "x": [10.0],
            "y": [20.0],
            "w": [30.0],
            "h": [20.0],
            "class_id": [1],
            "class_name": ["nodule"],
            "score": [0.9],
        }
    )
    drawn = np.asarray(draw_boxes(image, boxes))
    assert drawn.shape == (64, 80, 3)
    assert tuple(drawn[40, 25]) != (100, 100, 100)  # bottom edge drawn in colour
    assert tuple(drawn[30, 25]) == (100, 100, 100)  # inside untouched
    grid = sample_grid(
        [(image, boxes, "a"), (image, boxes.iloc[:0], "b"), (image, boxes, "c")],
        tmp_path / "grid.png",
        columns=2,
        tile=64,
    )
    assert grid.size == (128, 2 * (64 + 16))
    assert Image.open(tmp_path / "grid.png").size == grid.size
