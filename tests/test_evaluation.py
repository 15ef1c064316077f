"""Holdout evaluation helpers: the truth file and submission rescored by `cxrdet evaluate`
give the in-process metric exactly; the box precision-recall curve by hand; ablations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdet.cli import main
from cxrdet.ensemble import EnsembleRecipe, Gating
from cxrdet.evaluation import (
    Holdout,
    ablations,
    precision_recall,
    threshold_curve,
    write_truth_file,
)
from cxrdet.submission import write_rsna_submission, write_vinbigdata_submission

BENCH = Path(__file__).resolve().parents[1] / "bench" / "tuning.py"
_spec = importlib.util.spec_from_file_location("bench_tuning", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
RECIPE = EnsembleRecipe(gating=Gating("product", {"threshold": 0.1}), score_threshold=0.2)


@pytest.fixture(scope="module")
def holdout() -> Holdout:
    data = bench.synthetic_data(40, folds=2, views=("original", "hflip"), seed=5)
    # every image predicted by both fold models, as on the holdout
    other = data.predictions
    both = type(other)(
        pd.concat(
            [other.boxes, other.boxes.assign(fold=1 - other.boxes["fold"], x=other.boxes["x"] + 3)]
        ),
        pd.concat([other.images, other.images.assign(fold=1 - other.images["fold"])]),
        pd.concat([other.classifier, other.classifier.assign(fold=1 - other.classifier["fold"])]),
        other.sizes,
    )
    return Holdout(both, data.truth, data.image_ids, "rsna", data.class_names)


@pytest.mark.parametrize("fmt", ["rsna", "vinbigdata"])
def test_cxrdet_evaluate_on_the_written_files_equals_the_metric(holdout, fmt, tmp_path, capsys):
    final = holdout.final(RECIPE)
    truth = (
        holdout.truth.assign(class_id=np.arange(len(holdout.truth)) % 3)
        if fmt == "vinbigdata"
        else holdout.truth
    )
    final = final.assign(class_id=np.arange(len(final)) % 3) if fmt == "vinbigdata" else final
    scored = Holdout(holdout.members, truth, holdout.image_ids, fmt, holdout.class_names)
    write_truth_file(
        fmt, truth, holdout.image_ids, [f"class{k}" for k in range(14)], tmp_path / "truth.csv"
    )
    writer = write_rsna_submission if fmt == "rsna" else write_vinbigdata_submission
    writer(final, tmp_path / "submission.csv", image_ids=holdout.image_ids)
    if fmt == "vinbigdata":  # the official class names, as prepare keeps them
        from cxrdet.data.sources.vinbigdata import CLASS_NAMES

        write_truth_file(fmt, truth, holdout.image_ids, CLASS_NAMES, tmp_path / "truth.csv")
    extra = ["--no-fuse-readers"] if fmt == "vinbigdata" else []
    assert (
        main(
            [
                "evaluate",
                "--format",
                fmt,
                "--truth",
                str(tmp_path / "truth.csv"),
                "--submission",
                str(tmp_path / "submission.csv"),
                "--json",
                *extra,
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    expected = scored.score(final)
    assert 0 < expected < 1
    assert report["score"] == pytest.approx(expected, abs=1e-12)


def test_precision_recall_by_hand():
    truth = pd.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "x": [0.0, 100, 0],
            "y": 0.0,
            "w": 50.0,
            "h": 50.0,
            "class_id": 0,
        }
    )
    predictions = pd.DataFrame(
        {
            "image_id": ["a", "a", "b", "a"],
            "x": [0.0, 2, 200, 100],
            "y": 0.0,
            "w": 50.0,
            "h": 50.0,
            "score": [0.9, 0.8, 0.7, 0.6],
            "class_id": 0,
        }
    )
    curve = precision_recall(truth, predictions)
    # 0.9 hits a's first box; 0.8 overlaps the same (taken): FP; 0.7 misses b; 0.6 hits a's second
    np.testing.assert_allclose(curve["precision"], [1, 1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(curve["recall"], [1 / 3, 1 / 3, 1 / 3, 2 / 3])


def test_ablation_table_and_threshold_curve(holdout):
    table = ablations(holdout, RECIPE, untuned=RECIPE.with_changes(detector_views=("scale0.8",)))
    assert table["ensemble"]["score"] == pytest.approx(holdout.score(holdout.final(RECIPE)))
    assert {
        "fold0",
        "fold1",
        "no_tta",
        "no_gating",
        "no_shrink",
        "fusion_wbf",
        "fusion_soft_nms",
    } <= set(table)
    assert table["untuned"]["score"] is None and "scale0.8" in table["untuned"]["error"]
    curve = threshold_curve(holdout, RECIPE)
    at = curve.set_index("threshold")["score"]
    assert at[0.2] == pytest.approx(table["ensemble"]["score"])
