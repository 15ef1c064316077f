"""The RSNA score: hand-computed cases for every rule, properties, and agreement with the
per-pair reference implementations in bench/metrics.py."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrdet.metrics import RSNA_THRESHOLDS, iou_xywh, iou_xyxy, rsna_score, xywh_to_xyxy

# bench/metrics.py holds the per-pair reference implementations.
BENCH = Path(__file__).resolve().parents[1] / "bench" / "metrics.py"
_spec = importlib.util.spec_from_file_location("bench_metrics", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def truth_table(*rows: tuple) -> pd.DataFrame:
    """rows: (image_id, x, y, w, h)."""
    return pd.DataFrame(list(rows), columns=["image_id", "x", "y", "w", "h"]).astype(
        {"x": float, "y": float, "w": float, "h": float}
    )


def pred_table(*rows: tuple) -> pd.DataFrame:
    """rows: (image_id, x, y, w, h, score)."""
    return pd.DataFrame(list(rows), columns=["image_id", "x", "y", "w", "h", "score"]).astype(
        {"x": float, "y": float, "w": float, "h": float, "score": float}
    )


NO_PRED = pred_table()
NO_TRUTH = truth_table()


# ---------------------------------------------------------------- IoU


def test_iou_matrix_xywh_and_xyxy() -> None:
    a = np.array([[0, 0, 10, 10], [5, 5, 10, 10]])
    b = np.array([[0, 0, 10, 10], [0, 5, 10, 5], [20, 20, 1, 1]])
    expected = np.array([[1.0, 0.5, 0.0], [25 / 175, 25 / 125, 0.0]])
    np.testing.assert_allclose(iou_xywh(a, b), expected)
    np.testing.assert_allclose(iou_xyxy(xywh_to_xyxy(a), xywh_to_xyxy(b)), expected)
    assert iou_xywh(a, np.zeros((0, 4))).shape == (2, 0)


def test_zero_area_boxes_have_iou_zero() -> None:
    zero = np.array([[5, 5, 0, 0], [5, 5, 0, 3]])
    iou = iou_xywh(zero, zero)
    assert np.all(iou == 0) and np.isfinite(iou).all()


# ---------------------------------------------------------------- image-level rules


def test_perfect_prediction_scores_one() -> None:
    truth = truth_table(("a", 10, 10, 50, 80), ("a", 200, 100, 60, 60), ("b", 0, 0, 30, 30))
    preds = pred_table(
        *[(*row, 0.9 - 0.1 * k) for k, row in enumerate(truth.itertuples(index=False))]
    )
    result = rsna_score(truth, preds)
    assert result.score == 1.0
    assert result.n_images == 2
    assert result.per_threshold == {t: 1.0 for t in RSNA_THRESHOLDS}


def test_image_with_neither_is_left_out_and_counts() -> None:
    truth = truth_table(("a", 0, 0, 10, 10))
    preds = pred_table(("a", 0, 0, 10, 10, 0.9), ("b", 0, 0, 10, 10, 0.8))
    result = rsna_score(truth, preds)
    # a is perfect, b (no truth, a prediction) scores 0; an image with neither never appears.
    assert result.score == 0.5
    assert result.n_images == 2
    per_image = result.per_image.set_index("image_id")
    assert per_image["score"].to_dict() == {"a": 1.0, "b": 0.0}
    assert per_image.loc["a", ["n_truth", "n_pred"]].tolist() == [1, 1]


def test_truth_without_predictions_scores_zero() -> None:
    result = rsna_score(truth_table(("a", 0, 0, 10, 10), ("a", 50, 50, 10, 10)), NO_PRED)
    assert result.score == 0.0 and result.n_images == 1


def test_nothing_at_all_is_nan_with_no_images() -> None:
    result = rsna_score(NO_TRUTH, NO_PRED)
    assert result.n_images == 0 and math.isnan(result.score)


@pytest.mark.parametrize("k", range(len(RSNA_THRESHOLDS)))
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_threshold_edges(k: int, offset: int) -> None:
    """A 100x100 truth and a 100xh prediction at its corner have IoU h/100 exactly."""
    t = RSNA_THRESHOLDS[k]
    h = round(t * 100) + offset
    truth = truth_table(("a", 0, 0, 100, 100))
    preds = pred_table(("a", 0, 0, 100, h, 0.5))
    iou = h / 100
    official = sum(iou > s for s in RSNA_THRESHOLDS) / 8
    kernel = sum(iou >= s for s in RSNA_THRESHOLDS) / 8
    assert rsna_score(truth, preds).score == official
    assert rsna_score(truth, preds, variant="kernel").score == kernel
    if offset == 0:  # IoU exactly t: not a match in the official score, a match in the kernel
        assert rsna_score(truth, preds).per_threshold[t] == 0.0
        assert rsna_score(truth, preds, variant="kernel").per_threshold[t] == 1.0


# G1 = [0,10] and G2 = [10,20] in x (height 10); P1 = [1,20] overlaps G1 with IoU 0.45 and
# G2 with IoU 10/19 = 0.526; P2 = G2 exactly.
COMPETING_TRUTH = truth_table(("a", 0, 0, 10, 10), ("a", 10, 0, 10, 10))


def competing(p1_score: float, p2_score: float) -> pd.DataFrame:
    return pred_table(("a", 1, 0, 19, 10, p1_score), ("a", 10, 0, 10, 10, p2_score))


def test_confidence_order_decides_between_competing_predictions() -> None:
    # P1 first takes G2 (its best), so P2 has nothing left and G1 is missed: 1/3 at every t.
    assert rsna_score(COMPETING_TRUTH, competing(0.9, 0.8)).score == pytest.approx(1 / 3)
    # P2 first takes G2; P1 then matches G1 (0.45 > 0.40 only): 1 at 0.40, 1/3 elsewhere.
    result = rsna_score(COMPETING_TRUTH, competing(0.8, 0.9))
    assert result.per_threshold[0.40] == 1.0
    assert result.per_threshold[0.45] == pytest.approx(1 / 3)
    assert result.score == pytest.approx((1 + 7 / 3) / 8)


def test_kernel_variant_walks_truth_first() -> None:
    # G1 takes P1 while IoU 0.45 >= t (t = 0.40, 0.45), G2 then takes P2: 1 there;
    # from 0.50 G1 finds nothing, G2 takes P1 (0.526) up to 0.50 and P2 beyond: 1/3.
    result = rsna_score(COMPETING_TRUTH, competing(0.9, 0.8), variant="kernel")
    assert result.per_threshold[0.45] == 1.0
    assert result.per_threshold[0.50] == pytest.approx(1 / 3)
    assert result.score == pytest.approx(0.5)
    assert result.variant == "kernel"


def test_duplicate_predictions_and_duplicate_truths() -> None:
    box = ("a", 0, 0, 10, 10)
    # The second copy of a prediction is a false positive.
    assert rsna_score(truth_table(box), pred_table((*box, 0.9), (*box, 0.9))).score == 0.5
    # One prediction for two identical truth boxes: one TP, one FN.
    assert rsna_score(truth_table(box, box), pred_table((*box, 0.9))).score == 0.5
    assert rsna_score(truth_table(box, box), pred_table((*box, 0.9), (*box, 0.8))).score == 1.0


@pytest.mark.parametrize("variant", ["official", "kernel"])
def test_zero_area_boxes_score_zero_without_crashing(variant: str) -> None:
    flat = ("a", 5, 5, 0, 10)
    assert (
        rsna_score(
            truth_table(("a", 0, 0, 10, 10)), pred_table((*flat, 0.9)), variant=variant
        ).score
        == 0
    )
    assert rsna_score(truth_table(flat), pred_table((*flat, 0.9)), variant=variant).score == 0


def test_bad_tables_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rsna_score(truth_table(("a", np.nan, 0, 1, 1)), NO_PRED)
    with pytest.raises(ValueError, match="negative"):
        rsna_score(NO_TRUTH, pred_table(("a", 0, 0, -1, 1, 0.5)))
    with pytest.raises(ValueError, match="score"):
        rsna_score(NO_TRUTH, truth_table(("a", 0, 0, 1, 1)))
    with pytest.raises(ValueError, match="variant"):
        rsna_score(NO_TRUTH, NO_PRED, variant="other")  # type: ignore[arg-type]


def test_per_image_table_and_thresholds_are_consistent() -> None:
    truth, preds = bench.synthetic(60, seed=3)
    result = rsna_score(truth, preds)
    columns = [f"{t:g}" for t in RSNA_THRESHOLDS]
    np.testing.assert_allclose(result.per_image[columns].mean(axis=1), result.per_image["score"])
    assert result.score == pytest.approx(result.per_image["score"].mean())
    assert list(result.per_threshold.values()) == pytest.approx(
        result.per_image[columns].mean().tolist()
    )


# ---------------------------------------------------------------- properties

coordinate = st.integers(0, 40).map(float)
size = st.integers(1, 30).map(float)
box = st.tuples(st.sampled_from("abc"), coordinate, coordinate, size, size)
# Distinct-ish confidences from a small grid, so ties happen too.
boxes_with_scores = st.lists(st.tuples(box, st.integers(1, 8).map(lambda s: s / 8)), max_size=8)


def tables(truth_rows: list, pred_rows: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    return truth_table(*truth_rows), pred_table(*[(*b, s) for b, s in pred_rows])


@settings(max_examples=60, deadline=None)
@given(st.lists(box, max_size=6), boxes_with_scores, st.randoms(use_true_random=False))
def test_row_order_does_not_matter_and_score_in_range(truth_rows, pred_rows, rnd) -> None:
    truth, preds = tables(truth_rows, pred_rows)
    expected = rsna_score(truth, preds)
    shuffled_truth = truth.sample(frac=1, random_state=rnd.randint(0, 9999))
    shuffled_preds = preds.sample(frac=1, random_state=rnd.randint(0, 9999))
    again = rsna_score(shuffled_truth, shuffled_preds)
    if expected.n_images:
        assert 0.0 <= expected.score <= 1.0
        assert again.score == expected.score
    assert again.n_images == expected.n_images


@settings(max_examples=40, deadline=None)
@given(st.lists(box, max_size=8), st.randoms(use_true_random=False))
def test_predicting_the_truth_scores_one(truth_rows, rnd) -> None:
    truth = truth_table(*truth_rows)
    preds = truth.assign(score=[rnd.random() for _ in range(len(truth))])
    if len(truth):
        assert rsna_score(truth, preds).score == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(box, max_size=6), boxes_with_scores)
def test_matches_the_per_pair_references(truth_rows, pred_rows) -> None:
    truth, preds = tables(truth_rows, pred_rows)
    if len(truth) + len(preds):
        assert rsna_score(truth, preds).score == pytest.approx(bench.baseline_rsna(truth, preds))
        assert rsna_score(truth, preds, variant="kernel").score == pytest.approx(
            bench.baseline_rsna_kernel(truth, preds)
        )


def test_matches_the_reference_on_a_larger_set() -> None:
    truth, preds = bench.synthetic(200, seed=11)
    assert rsna_score(truth, preds).score == pytest.approx(bench.baseline_rsna(truth, preds))
    assert rsna_score(truth, preds, variant="kernel").score == pytest.approx(
        bench.baseline_rsna_kernel(truth, preds)
    )
