"""`cxrdet evaluate`: JSON and summary output, reader fusion, negatives, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrdet.cli import main
from cxrdet.submission import (
    write_folder_submission,
    write_rsna_submission,
    write_vinbigdata_submission,
)

RSNA_LABELS = """patientId,x,y,width,height,Target
p1,100,100,200,300,1
p1,500,100,150,300,1
p2,,,,,0
p3,10,10,100,100,1
p4,,,,,0
"""
# p1 perfect (1), p2 a false positive (0), p3 missed (0), p4 left out -> 1/3.
RSNA_SUBMISSION = """patientId,PredictionString
p1,0.9 100 100 200 300 0.5 505 100 150 300
p2,0.3 0 0 50 50
p3,
p4,
"""
VIN_TRAIN = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
v1,Cardiomegaly,3,R1,100,200,400,300
v1,Cardiomegaly,3,R2,104,196,404,304
v1,Cardiomegaly,3,R3,96,204,396,296
v2,No finding,14,R1,,,,
v2,No finding,14,R2,,,,
v2,No finding,14,R3,,,,
"""
VIN_SUBMISSION = """image_id,PredictionString
v1,3 0.9 100 200 400 300
v2,14 1 0 0 1 1
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def evaluate_json(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> dict:
    assert main(["evaluate", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_rsna_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = write(tmp_path, "labels.csv", RSNA_LABELS)
    sub = write(tmp_path, "sub.csv", RSNA_SUBMISSION)
    report = evaluate_json(capsys, "--format", "rsna", "--truth", truth, "--submission", sub)
    assert report["score"] == pytest.approx(1 / 3)
    assert report["n_images"] == 3
    assert report["variant"] == "official"
    assert list(report["per_threshold"]) == [
        "0.4",
        "0.45",
        "0.5",
        "0.55",
        "0.6",
        "0.65",
        "0.7",
        "0.75",
    ]
    kernel = evaluate_json(
        capsys, "--format", "rsna", "--truth", truth, "--submission", sub, "--variant", "kernel"
    )
    assert kernel["variant"] == "kernel"


def test_rsna_summary_and_missing_images_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = write(tmp_path, "labels.csv", RSNA_LABELS)
    sub = write(tmp_path, "sub.csv", RSNA_SUBMISSION.replace("p3,\np4,\n", ""))
    assert (
        main(["evaluate", "--format", "rsna", "--truth", str(truth), "--submission", str(sub)]) == 0
    )
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "RSNA score (official): 0.3333 over 3 images"
    assert "IoU > 0.75" in out
    assert "warning: " in err and "2 truth images are not in the submission" in err


def test_vinbigdata_fuses_readers_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = write(tmp_path, "train.csv", VIN_TRAIN)
    sub = write(tmp_path, "sub.csv", VIN_SUBMISSION)
    args = ("--format", "vinbigdata", "--truth", truth, "--submission", sub)
    fused = evaluate_json(capsys, *args)
    assert fused["score"] == 1.0 and fused["n_images"] == 2 and fused["fused_readers"] is True
    assert fused["per_class"] == [
        {"class_id": 3, "class_name": "Cardiomegaly", "ap": 1.0, "n_truth": 1},
        {"class_id": 14, "class_name": "No finding", "ap": 1.0, "n_truth": 1},
    ]
    # As given, the three readers' boxes are three truth boxes: one prediction finds one.
    raw = evaluate_json(capsys, *args, "--no-fuse-readers")
    assert raw["per_class"][0]["n_truth"] == 3
    assert raw["per_class"][0]["ap"] == pytest.approx(1 / 3)


def test_folder_counts_negatives_from_images_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "annotations.csv", "image_id,x,y,width,height,label\nf1,10,10,20,20,nodule\n")
    write(tmp_path, "images.csv", "image_id,label\nf1,abnormal\nf2,normal\n")
    sub = write(
        tmp_path,
        "sub.csv",
        "image_id,x,y,width,height,label,score\nf1,10,10,20,20,nodule,0.5\nf2,0,0,5,5,nodule,0.9\n",
    )
    report = evaluate_json(
        capsys, "--format", "folder", "--truth", tmp_path / "annotations.csv", "--submission", sub
    )
    # The negative f2's box outranks the true positive: precision 1/2 at recall 1.
    assert report["score"] == 0.5 and report["n_images"] == 2
    assert report["per_class"] == [{"class_id": 0, "class_name": "nodule", "ap": 0.5, "n_truth": 1}]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--format", "rsna", "--submission", "bad.csv"],
            "bad.csv, line 3: PredictionString has 4 tokens",
        ),
        (
            ["--format", "rsna", "--submission", "unknown.csv"],
            "unknown.csv, line 2: image id 'p9' is not in the truth",
        ),
        (["--format", "rsna", "--submission", "absent.csv"], "absent.csv: cannot open"),
        (["--format", "vinbigdata", "--submission", "sub.csv"], "labels.csv: missing column(s)"),
        (
            ["--format", "folder", "--submission", "sub.csv", "--variant", "kernel"],
            "--variant applies to --format rsna only",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "labels.csv", RSNA_LABELS)
    write(tmp_path, "sub.csv", RSNA_SUBMISSION)
    write(tmp_path, "bad.csv", "patientId,PredictionString\np1,\np2,0.3 0 0 50\n")
    write(tmp_path, "unknown.csv", "patientId,PredictionString\np9,\n")
    assert main(["evaluate", "--truth", "labels.csv", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("cxrdet evaluate: error: ") and message in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64, "binary.csv, line 1: not UTF-8 text"),
        (
            "patientId,PredictionString\np1,\np2,0.5 1 2 3 4 # caf\u00e9\n".encode("latin-1"),
            "binary.csv, line 3: not UTF-8 text",
        ),
        (
            b"patientId,PredictionString\np1,\np2," + b"9" * 131_073 + b"\n",
            "binary.csv, line 3: not a valid CSV row: field larger than field limit",
        ),
    ],
    ids=["binary", "latin-1", "huge-field"],
)
def test_an_unreadable_submission_exits_2_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    truth = write(tmp_path, "labels.csv", RSNA_LABELS)
    (tmp_path / "binary.csv").write_bytes(content)
    argv = ["--format", "rsna", "--truth", str(truth), "--submission", str(tmp_path / "binary.csv")]
    assert main(["evaluate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_console_entry_point_exits_2(tmp_path: Path) -> None:
    truth = write(tmp_path, "labels.csv", RSNA_LABELS)
    bad = write(tmp_path, "bad.csv", "patientId,PredictionString\np1,0.9 1 2 x 4\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrdet.cli",
            "evaluate",
            "--format",
            "rsna",
            "--truth",
            str(truth),
            "--submission",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"{bad}, line 2: non-numeric value 'x'" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- the demo data's real layouts


def test_demo_truth_predicted_exactly_scores_one(
    demo_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrdet.data.sources.folder import parse_annotations_csv
    from cxrdet.data.sources.rsna import parse_labels_csv
    from cxrdet.data.sources.vinbigdata import parse_train_csv
    from cxrdet.metrics import vinbigdata_score
    from cxrdet.submission import read_vinbigdata_submission

    labels = demo_raw / "rsna" / "stage_2_train_labels.csv"
    boxes, ids = parse_labels_csv(labels)
    sub = write_rsna_submission(
        boxes.assign(score=0.9, class_id=0), tmp_path / "rsna.csv", image_ids=ids
    )
    report = evaluate_json(capsys, "--format", "rsna", "--truth", labels, "--submission", sub)
    assert report["score"] == 1.0 and report["n_images"] == boxes["image_id"].nunique()

    train = demo_raw / "vinbigdata" / "train.csv"
    parsed = parse_train_csv(train)
    sub = write_vinbigdata_submission(
        parsed.boxes.assign(score=0.8), tmp_path / "vin.csv", image_ids=parsed.image_ids
    )
    args = ("--format", "vinbigdata", "--truth", train, "--submission", sub)
    # Some demo readers drew identical boxes; under the VOC rule only one copy can be
    # matched, so the readers' own boxes do not score 1 unfused.
    expected = vinbigdata_score(
        parsed.boxes, read_vinbigdata_submission(sub).predictions, image_ids=parsed.image_ids
    )
    unfused = evaluate_json(capsys, *args, "--no-fuse-readers")
    assert unfused["score"] == pytest.approx(expected.score) and unfused["n_images"] == len(
        parsed.image_ids
    )
    assert 0.0 <= evaluate_json(capsys, *args)["score"] <= 1.0

    annotations = demo_raw / "folder" / "annotations.csv"
    truth, ids, class_names = parse_annotations_csv(annotations)
    assert len(ids) > truth["image_id"].nunique()  # images.csv adds the negatives
    sub = write_folder_submission(
        truth.assign(score=0.7), tmp_path / "folder.csv", class_names, image_ids=ids
    )
    report = evaluate_json(
        capsys, "--format", "folder", "--truth", annotations, "--submission", sub
    )
    assert report["score"] == 1.0 and report["n_images"] == len(ids)
    assert [row["class_name"] for row in report["per_class"]] == class_names
