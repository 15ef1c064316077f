"""The VinBigData mAP@0.4: a hand-computed precision/recall table, class 14, the VOC
matching rule, properties, and agreement with the per-pair reference in bench/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrdet.metrics import NO_FINDING, vinbigdata_score, voc_ap, with_no_finding_boxes

BENCH = Path(__file__).resolve().parents[1] / "bench" / "metrics.py"
_spec = importlib.util.spec_from_file_location("bench_metrics", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

COLUMNS = ["image_id", "x", "y", "w", "h", "class_id"]


def truth_table(*rows: tuple) -> pd.DataFrame:
    """rows: (image_id, x, y, w, h, class_id)."""
    return pd.DataFrame(list(rows), columns=COLUMNS).astype(
        {"x": float, "y": float, "w": float, "h": float, "class_id": int}
    )


def pred_table(*rows: tuple) -> pd.DataFrame:
    """rows: (image_id, x, y, w, h, class_id, score)."""
    return pd.DataFrame(list(rows), columns=[*COLUMNS, "score"]).astype(
        {"x": float, "y": float, "w": float, "h": float, "class_id": int, "score": float}
    )


# ---------------------------------------------------------------- hand-computed AP

# Ranked predictions of class 3 (3 truth boxes):   TP     precision  recall
#   0.9  a, exactly G1                              yes    1/1        1/3
#   0.8  b, far from G3                             no     1/2        1/3
#   0.7  b, exactly G3                              yes    2/3        2/3
#   0.6  a, G1 shifted 1 px (G1 already matched)    no     2/4        2/3
#   0.5  a, exactly G2                              yes    3/5        3/3
# Envelope: 1 on (0, 1/3], max(2/3, 1/2, 3/5) = 2/3 on (1/3, 2/3], 3/5 on (2/3, 1].
# AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45.
HAND_AP = 34 / 45
HAND_TRUTH = truth_table(("a", 0, 0, 10, 10, 3), ("a", 50, 50, 10, 10, 3), ("b", 0, 0, 10, 10, 3))
HAND_PREDS = pred_table(
    ("a", 0, 0, 10, 10, 3, 0.9),
    ("b", 30, 30, 10, 10, 3, 0.8),
    ("b", 0, 0, 10, 10, 3, 0.7),
    ("a", 1, 0, 10, 10, 3, 0.6),
    ("a", 50, 50, 10, 10, 3, 0.5),
)


def test_voc_ap_of_the_hand_table() -> None:
    recall = np.array([1, 1, 2, 2, 3]) / 3
    precision = np.array([1 / 1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    assert voc_ap(recall, precision) == pytest.approx(HAND_AP)


def test_score_of_the_hand_table() -> None:
    result = vinbigdata_score(HAND_TRUTH, HAND_PREDS)
    assert result.per_class == pytest.approx({3: HAND_AP})
    assert result.score == pytest.approx(HAND_AP)
    assert result.n_images == 2
    assert result.n_truth == {3: 3}


def test_voc_ap_edge_cases() -> None:
    assert voc_ap(np.array([]), np.array([])) == 0.0
    assert voc_ap(np.array([1.0]), np.array([1.0])) == 1.0
    # A late true positive still adds its recall step at its own precision.
    assert voc_ap(np.array([0.0, 0.5]), np.array([0.0, 0.5])) == pytest.approx(0.25)


# ---------------------------------------------------------------- rules


def test_no_finding_images_are_scored_through_class_14_boxes() -> None:
    truth = truth_table(("a", 0, 0, 10, 10, 0))
    preds = pred_table(("a", 0, 0, 10, 10, 0, 0.9), ("b", 0, 0, 1, 1, NO_FINDING, 1.0))
    result = vinbigdata_score(truth, preds, image_ids=["a", "b", "c"])
    # Class 14 truth: b and c; only b is predicted -> recall 1/2 at precision 1.
    assert result.per_class == {0: 1.0, NO_FINDING: 0.5}
    assert result.score == 0.75
    assert result.n_images == 3
    assert result.n_truth == {0: 1, NO_FINDING: 2}


def test_explicit_no_finding_rows_are_replaced() -> None:
    """Truth may carry class-14 rows (any box, even NaN); they become one 0 0 1 1 box."""
    truth = truth_table(
        ("a", 0, 0, 10, 10, 0), ("b", np.nan, np.nan, np.nan, np.nan, 14), ("b", 0, 0, 5, 5, 14)
    )
    fixed = with_no_finding_boxes(truth, ["a", "b"])
    assert fixed[fixed["class_id"] == NO_FINDING][
        ["image_id", "x", "y", "w", "h"]
    ].values.tolist() == [["b", 0.0, 0.0, 1.0, 1.0]]
    assert (
        vinbigdata_score(truth, pred_table(("b", 0, 0, 1, 1, 14, 0.7))).per_class[NO_FINDING] == 1.0
    )


def test_a_second_detection_of_a_matched_box_is_a_false_positive() -> None:
    """VOC rule: match to the best-IoU truth box; if that one is taken, it is a miss even
    when another truth box would pass the threshold."""
    truth = truth_table(("a", 0, 0, 10, 10, 0), ("a", 2, 0, 10, 10, 0))
    # P2 has IoU 100/110 with G1 (taken by P1) and 90/120 = 0.75 with G2.
    preds = pred_table(("a", 0, 0, 10, 10, 0, 0.9), ("a", 0, 0, 11, 10, 0, 0.8))
    assert vinbigdata_score(truth, preds).per_class[0] == pytest.approx(0.5)


@pytest.mark.parametrize(("height", "ap"), [(40, 0.0), (41, 1.0)])
def test_iou_must_exceed_0_4(height: int, ap: float) -> None:
    truth = truth_table(("a", 0, 0, 100, 100, 2))
    preds = pred_table(("a", 0, 0, 100, height, 2, 0.5))  # IoU height / 100
    assert vinbigdata_score(truth, preds).score == ap


def test_matching_stays_within_image_and_class() -> None:
    truth = truth_table(("a", 0, 0, 10, 10, 0), ("b", 0, 0, 10, 10, 1))
    preds = pred_table(("b", 0, 0, 10, 10, 0, 0.9), ("a", 0, 0, 10, 10, 1, 0.9))
    assert vinbigdata_score(truth, preds).per_class == {0: 0.0, 1: 0.0}


def test_classes_absent_from_the_truth_are_not_averaged() -> None:
    extra = pred_table(("a", 0, 0, 10, 10, 5, 0.99), ("b", 3, 3, 3, 3, 9, 0.4))
    result = vinbigdata_score(HAND_TRUTH, pd.concat([HAND_PREDS, extra], ignore_index=True))
    assert result.per_class == pytest.approx({3: HAND_AP})


def test_a_class_without_predictions_scores_zero() -> None:
    truth = truth_table(("a", 0, 0, 10, 10, 0), ("a", 20, 20, 10, 10, 1))
    result = vinbigdata_score(truth, pred_table(("a", 0, 0, 10, 10, 0, 0.5)))
    assert result.per_class == {0: 1.0, 1: 0.0} and result.score == 0.5


def test_missing_columns_are_rejected() -> None:
    with pytest.raises(ValueError, match="class_id"):
        vinbigdata_score(HAND_TRUTH, HAND_PREDS.drop(columns="class_id"))
    with pytest.raises(ValueError, match="score"):
        vinbigdata_score(HAND_TRUTH, HAND_PREDS.drop(columns="score"))


# ---------------------------------------------------------------- properties

coordinate = st.integers(0, 40).map(float)
size = st.integers(1, 30).map(float)
labelled_box = st.tuples(
    st.sampled_from("abcd"), coordinate, coordinate, size, size, st.sampled_from([0, 1, 2])
)
scored = st.lists(st.tuples(labelled_box, st.integers(1, 8).map(lambda s: s / 8)), max_size=10)
IDS = list("abcd")


def preds_of(rows: list) -> pd.DataFrame:
    return pred_table(*[(*b, s) for b, s in rows])


@settings(max_examples=60, deadline=None)
@given(st.lists(labelled_box, max_size=8), scored, st.lists(labelled_box, min_size=1, max_size=6))
def test_extra_low_confidence_boxes_cannot_lower_ap(truth_rows, pred_rows, extra_rows) -> None:
    truth, preds = truth_table(*truth_rows), preds_of(pred_rows)
    floor = preds["score"].min() if len(preds) else 1.0
    extra = pred_table(*[(*b, floor / (k + 2)) for k, b in enumerate(extra_rows)])
    before = vinbigdata_score(truth, preds, image_ids=IDS)
    after = vinbigdata_score(truth, pd.concat([preds, extra], ignore_index=True), image_ids=IDS)
    for cls, ap in before.per_class.items():
        assert after.per_class[cls] >= ap - 1e-12
    assert after.score >= before.score - 1e-12


@settings(max_examples=60, deadline=None)
@given(st.lists(labelled_box, max_size=8), scored, st.randoms(use_true_random=False))
def test_row_order_does_not_matter_and_score_in_range(truth_rows, pred_rows, rnd) -> None:
    truth, preds = truth_table(*truth_rows), preds_of(pred_rows)
    expected = vinbigdata_score(truth, preds, image_ids=IDS)
    again = vinbigdata_score(
        truth.sample(frac=1, random_state=rnd.randint(0, 9999)),
        preds.sample(frac=1, random_state=rnd.randint(0, 9999)),
        image_ids=IDS[::-1],
    )
    assert 0.0 <= expected.score <= 1.0
    assert again.score == expected.score and again.per_class == expected.per_class


@settings(max_examples=40, deadline=None)
@given(st.lists(labelled_box, max_size=8, unique=True), st.randoms(use_true_random=False))
def test_predicting_the_truth_scores_one(truth_rows, rnd) -> None:
    """Distinct truth boxes: under the VOC rule a copy of a truth box can never be
    matched (both predictions pick the first copy), see the test below."""
    truth = with_no_finding_boxes(truth_table(*truth_rows), IDS)
    preds = truth.assign(score=[rnd.random() for _ in range(len(truth))])
    result = vinbigdata_score(truth, preds, image_ids=IDS)
    assert result.score == 1.0


def test_identical_truth_boxes_cannot_both_be_matched() -> None:
    box = ("a", 0, 0, 10, 10, 0)
    preds = pred_table((*box, 0.9), (*box, 0.8))
    assert vinbigdata_score(truth_table(box, box), preds).per_class[0] == 0.5


@settings(max_examples=60, deadline=None)
@given(st.lists(labelled_box, min_size=1, max_size=8), scored)
def test_matches_the_per_pair_reference(truth_rows, pred_rows) -> None:
    truth, preds = truth_table(*truth_rows), preds_of(pred_rows)
    assert vinbigdata_score(truth, preds).score == pytest.approx(
        bench.baseline_vinbigdata(truth, preds)
    )


def test_matches_the_reference_on_a_larger_set() -> None:
    truth, preds = bench.synthetic(200, seed=5)
    assert vinbigdata_score(truth, preds).score == pytest.approx(
        bench.baseline_vinbigdata(truth, preds)
    )
