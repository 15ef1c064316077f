"""Submission files: round trips, and every kind of bad input named by file and line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrdet.errors import AnnotationError
from cxrdet.submission import (
    PREDICTION_COLUMNS,
    read_folder_submission,
    read_rsna_submission,
    read_vinbigdata_submission,
    write_folder_submission,
    write_rsna_submission,
    write_vinbigdata_submission,
)


def predictions(*rows: tuple) -> pd.DataFrame:
    """rows: (image_id, x, y, w, h, score, class_id)."""
    return pd.DataFrame(list(rows), columns=list(PREDICTION_COLUMNS)).astype(PREDICTION_COLUMNS)


def write(tmp_path: Path, text: str, name: str = "sub.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sorted_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["image_id", "score", "x"]).reset_index(drop=True)


# ---------------------------------------------------------------- reading good files


def test_read_rsna(tmp_path: Path) -> None:
    path = write(tmp_path, "patientId,PredictionString\np1,0.9 10 20 30 40 0.5 1 2 3 4\np2,\n")
    sub = read_rsna_submission(path)
    assert sub.image_ids == ["p1", "p2"]
    assert sub.predictions.values.tolist() == [
        ["p1", 10.0, 20.0, 30.0, 40.0, 0.9, 0],
        ["p1", 1.0, 2.0, 3.0, 4.0, 0.5, 0],
    ]
    assert list(sub.predictions.columns) == list(PREDICTION_COLUMNS)
    assert sub.predictions["class_id"].dtype == np.int64


def test_read_vinbigdata_converts_corners_to_width_height(tmp_path: Path) -> None:
    path = write(tmp_path, "image_id,PredictionString\nv1,3 0.8 10 20 40 60\nv2,14 1 0 0 1 1\n")
    sub = read_vinbigdata_submission(path)
    assert sub.predictions.values.tolist() == [
        ["v1", 10.0, 20.0, 30.0, 40.0, 0.8, 3],
        ["v2", 0.0, 0.0, 1.0, 1.0, 1.0, 14],
    ]


def test_read_folder(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "image_id,x,y,width,height,label,score\nf1,1,2,3,4,nodule,0.7\nf2,,,,,,\nf1,5,5,5,5,mass,0.2\n",
    )
    sub = read_folder_submission(path, ["mass", "nodule"])
    assert sub.image_ids == ["f1", "f2"]
    assert sub.predictions["class_id"].tolist() == [1, 0]


def test_blank_lines_are_skipped_and_lines_still_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "patientId,PredictionString\n\np1,0.9 1 1 1 1\n\np2,0.9 1 1 x 1\n")
    with pytest.raises(AnnotationError) as info:
        read_rsna_submission(path)
    assert info.value.row == 5


# ---------------------------------------------------------------- round trips


def test_rsna_round_trip_keeps_empty_images(tmp_path: Path) -> None:
    preds = predictions(
        ("a", 1.5, 2, 3, 4, 0.25, 0), ("a", 0, 0, 10, 10, 0.75, 0), ("b", 7, 8, 9, 10, 1 / 3, 0)
    )
    path = write_rsna_submission(preds, tmp_path / "r.csv", image_ids=["a", "b", "c"])
    lines = path.read_text().splitlines()
    assert lines[0] == "patientId,PredictionString"
    assert lines[1] == "a,0.75 0 0 10 10 0.25 1.5 2 3 4"  # descending confidence
    assert lines[3] == "c,"
    sub = read_rsna_submission(path)
    assert sub.image_ids == ["a", "b", "c"]
    pd.testing.assert_frame_equal(sorted_rows(sub.predictions), sorted_rows(preds))


def test_vinbigdata_round_trip_writes_no_finding(tmp_path: Path) -> None:
    preds = predictions(("a", 1, 2, 3, 4, 0.5, 0), ("a", 10, 20, 30, 40, 0.125, 13))
    path = write_vinbigdata_submission(preds, tmp_path / "v.csv", image_ids=["a", "z"])
    assert path.read_text().splitlines()[2] == "z,14 1 0 0 1 1"
    sub = read_vinbigdata_submission(path)
    expected = pd.concat([preds, predictions(("z", 0, 0, 1, 1, 1.0, 14))], ignore_index=True)
    pd.testing.assert_frame_equal(sorted_rows(sub.predictions), sorted_rows(expected))


def test_folder_round_trip(tmp_path: Path) -> None:
    preds = predictions(("a", 1, 2, 3, 4, 0.5, 1), ("b", 10, 20, 30, 40, 0.125, 0))
    path = write_folder_submission(
        preds, tmp_path / "f.csv", ["mass", "nodule"], image_ids=["a", "b", "c"]
    )
    sub = read_folder_submission(path, ["mass", "nodule"])
    assert sub.image_ids == ["a", "b", "c"]
    pd.testing.assert_frame_equal(sorted_rows(sub.predictions), sorted_rows(preds))


finite = st.floats(0, 5000, allow_nan=False, allow_infinity=False)
rows = st.lists(
    st.tuples(st.sampled_from(["p1", "p2", "p3"]), finite, finite, finite, finite, st.floats(0, 1)),
    max_size=12,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows)
def test_round_trips_are_exact(tmp_path: Path, boxes: list) -> None:
    rsna = predictions(*[(*b, 0) for b in boxes])
    back = read_rsna_submission(
        write_rsna_submission(rsna, tmp_path / "r.csv", image_ids=["p1", "p2", "p3"])
    )
    pd.testing.assert_frame_equal(sorted_rows(back.predictions), sorted_rows(rsna))
    vin = predictions(*[(*b, k % 14) for k, b in enumerate(boxes)])
    back = read_vinbigdata_submission(write_vinbigdata_submission(vin, tmp_path / "v.csv"))
    # x_max = x + w is written, so w comes back as (x + w) - x: equal up to rounding.
    np.testing.assert_allclose(
        sorted_rows(back.predictions)[["x", "y", "w", "h", "score", "class_id"]].to_numpy(float),
        sorted_rows(vin)[["x", "y", "w", "h", "score", "class_id"]].to_numpy(float),
        rtol=1e-12,
        atol=1e-9,
    )


def test_writers_reject_bad_predictions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NaN"):
        write_rsna_submission(predictions(("a", np.nan, 0, 1, 1, 0.5, 0)), tmp_path / "x.csv")
    with pytest.raises(ValueError, match="not in image_ids"):
        write_rsna_submission(
            predictions(("a", 0, 0, 1, 1, 0.5, 0)), tmp_path / "x.csv", image_ids=["b"]
        )
    assert not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------- bad input, by line

RSNA = "patientId,PredictionString\n"
VIN = "image_id,PredictionString\n"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (RSNA + "p1,0.9 1 2 3 4\np2,0.9 1 2 3\n", 3, "4 tokens, not a multiple of 5"),
        (RSNA + "p1,0.9 1 2 three 4\n", 2, "non-numeric value 'three'"),
        (RSNA + "p1,0.9 1 2 -3 4\n", 2, "negative width or height"),
        (RSNA + "p1,0.9 1 2 3 4\np2,nan 1 2 3 4\n", 3, "not finite"),
        (RSNA + "p1,0.9 1 2 inf 4\n", 2, "not finite"),
        (RSNA + "p1,0.9 1 2 3 4\np2,\np1,\n", 4, "duplicate patientId 'p1' (first on line 2)"),
        (RSNA + ",0.9 1 2 3 4\n", 2, "empty patientId"),
        (RSNA + "p1,0.9 1 2 3 4,extra\n", 2, "3 fields"),
        ("patientId,Prediction\np1,\n", 1, "header lacks columns ['PredictionString']"),
    ],
)
def test_bad_rsna_rows(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AnnotationError) as info:
        read_rsna_submission(path)
    assert info.value.row == line
    assert info.value.path == path
    assert problem in info.value.problem
    assert f"{path}, line {line}: " in str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (VIN + "v1,1 0.5 1 2 3 4 5\n", 2, "7 tokens, not a multiple of 6"),
        (VIN + "v1,1 0.5 1 2 3 4\nv2,2.5 0.5 1 2 3 4\n", 3, "class 2.5 is not an integer in 0..14"),
        (VIN + "v1,15 0.5 1 2 3 4\n", 2, "class 15"),
        (VIN + "v1,1 0.5 10 2 3 4\n", 2, "x_max < x_min"),
        (VIN + "v1,1 0.5 1 2 3 NaN\n", 2, "not finite"),
        (VIN + "v1,1 0.5 1 2 3 4\nv1,14 1 0 0 1 1\n", 3, "duplicate image_id 'v1'"),
    ],
)
def test_bad_vinbigdata_rows(tmp_path: Path, text: str, line: int, problem: str) -> None:
    with pytest.raises(AnnotationError) as info:
        read_vinbigdata_submission(write(tmp_path, text))
    assert (info.value.row, problem in info.value.problem) == (line, True), info.value.problem


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("f1,1,2,3,x,mass,0.5", "non-numeric value 'x'"),
        ("f1,1,2,-3,4,mass,0.5", "negative width or height"),
        ("f1,1,2,3,4,mass,inf", "not finite"),
        ("f1,1,2,3,4,tumour,0.5", "unknown label 'tumour'"),
        (",1,2,3,4,mass,0.5", "empty image_id"),
    ],
)
def test_bad_folder_rows(tmp_path: Path, row: str, problem: str) -> None:
    path = write(tmp_path, f"image_id,x,y,width,height,label,score\nf0,1,1,1,1,mass,0.1\n{row}\n")
    with pytest.raises(AnnotationError) as info:
        read_folder_submission(path, ["mass"])
    assert info.value.row == 3 and problem in info.value.problem


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="cannot open"):
        read_rsna_submission(tmp_path / "absent.csv")
    with pytest.raises(AnnotationError, match="empty file"):
        read_rsna_submission(write(tmp_path, ""))


# ---------------------------------------------------------------- ids against the truth


@pytest.mark.parametrize(
    ("reader", "text"),
    [
        (read_rsna_submission, RSNA + "p1,\np9,0.5 1 1 1 1\n"),
        (read_vinbigdata_submission, VIN + "p1,14 1 0 0 1 1\np9,14 1 0 0 1 1\n"),
        (
            lambda path, **kw: read_folder_submission(path, ["m"], **kw),
            "image_id,x,y,width,height,label,score\np1,,,,,,\np9,1,1,1,1,m,1\n",
        ),
    ],
)
def test_unknown_image_id_names_its_line(tmp_path: Path, reader, text: str) -> None:
    with pytest.raises(AnnotationError) as info:
        reader(write(tmp_path, text), truth_ids={"p1", "p2"})
    assert info.value.row == 3 and "'p9' is not in the truth" in info.value.problem


def test_truth_images_missing_from_the_submission_warn_with_their_number(tmp_path: Path) -> None:
    path = write(tmp_path, RSNA + "p1,0.5 1 1 1 1\n")
    with pytest.warns(UserWarning, match="2 truth images are not in the submission"):
        sub = read_rsna_submission(path, truth_ids=["p1", "p2", "p3"])
    assert sub.image_ids == ["p1"] and len(sub.predictions) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_rsna_submission(path, truth_ids=["p1"])
