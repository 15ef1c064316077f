"""Classification metrics: hand-computed binary values, one-vs-rest, undefined cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrdet.metrics import binary_metrics, multiclass_metrics

# Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-).
# AUC: of the 4 (positive, negative) pairs only (0.35, 0.4) is misordered -> 3/4.
# AP: precision 1 at recall 1/2, 2/3 at recall 1 -> 1/2 + 1/2 * 2/3 = 5/6.
# F1 by threshold: 0.8 -> P 1, R 1/2: 2/3; 0.35 -> P 2/3, R 1: 4/5; 0.1 -> P 1/2, R 1: 2/3.
LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_binary_metrics_by_hand() -> None:
    result = binary_metrics(LABELS, SCORES)
    assert result.roc_auc == pytest.approx(0.75)
    assert result.average_precision == pytest.approx(5 / 6)
    assert result.best_f1 == pytest.approx(0.8)
    assert result.best_threshold == pytest.approx(0.35)
    assert (result.n, result.n_positive) == (4, 2)


def test_boolean_labels_are_accepted() -> None:
    assert binary_metrics(np.array(LABELS, dtype=bool), SCORES) == binary_metrics(LABELS, SCORES)


def test_one_class_only_gives_nan_not_an_error() -> None:
    result = binary_metrics([1, 1, 1], [0.2, 0.5, 0.9])
    assert math.isnan(result.roc_auc) and math.isnan(result.best_threshold)
    assert result.n_positive == 3


@pytest.mark.parametrize(
    ("labels", "scores", "problem"),
    [
        ([0, 1], [0.5], "equal"),
        ([0, 2], [0.1, 0.2], "0/1"),
        ([0, 1], [0.1, float("nan")], "NaN"),
    ],
)
def test_bad_binary_input(labels, scores, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        binary_metrics(labels, scores)


def test_one_vs_rest() -> None:
    labels = np.array(["normal", "opacity", "other", "opacity", "normal", "other"])
    scores = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.1, 0.8, 0.1],
            [0.2, 0.3, 0.5],
            [0.3, 0.6, 0.1],
            [0.6, 0.1, 0.3],
            [0.1, 0.2, 0.7],
        ]
    )
    result = multiclass_metrics(labels, scores, ["normal", "opacity", "other"])
    assert set(result.per_class) == {"normal", "opacity", "other"}
    assert all(m.roc_auc == 1.0 for m in result.per_class.values())  # perfectly separable
    assert result.macro_roc_auc == 1.0 and result.macro_average_precision == 1.0
    assert result.per_class["opacity"] == binary_metrics(labels == "opacity", scores[:, 1])


def test_one_vs_rest_integer_classes_skip_undefined_in_macro() -> None:
    labels = [0, 1, 0, 1]
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.4, 0.6, 0.0], [0.5, 0.5, 0.0]])
    result = multiclass_metrics(labels, scores)
    assert math.isnan(result.per_class["2"].roc_auc)  # class 2 never occurs
    assert result.macro_roc_auc == pytest.approx(
        np.mean([result.per_class["0"].roc_auc, result.per_class["1"].roc_auc])
    )


def test_bad_multiclass_input() -> None:
    with pytest.raises(ValueError, match="not among the classes"):
        multiclass_metrics([0, 3], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="score columns"):
        multiclass_metrics([0, 1], np.zeros((2, 2)), ["a"])
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        multiclass_metrics([0, 1], np.zeros(2))
