"""Classifier gating: the 1st place product, the 2nd place sqrt rule, the VinBigData
2-class filter; expected scores worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxrdet.ensemble import EnsembleInputError, drop_below, gate_boxes
from cxrdet.errors import ConfigError

NOT_NORMAL = "p_No Lung Opacity / Not Normal"


def boxes(*rows: tuple[str, float, int]) -> pd.DataFrame:
    """Rows (image_id, score, class_id), every box at (10, 20) 30 x 40."""
    frame = pd.DataFrame(rows, columns=["image_id", "score", "class_id"])
    return frame.assign(x=10.0, y=20.0, w=30.0, h=40.0).astype({"class_id": np.int64})


BOXES = boxes(("a", 0.5, 0), ("a", 0.3, 0), ("b", 0.9, 0))
PROBS = pd.DataFrame(
    {"opacity": [0.8, 0.1], NOT_NORMAL: [0.15, 0.5]}, index=pd.Index(["a", "b"], name="image_id")
)


def test_no_gate_keeps_everything():
    pd.testing.assert_frame_equal(gate_boxes(BOXES, None), BOXES)


def test_first_place_product_gate():
    gated = gate_boxes(BOXES, PROBS, "product")
    # 0.5 x 0.8 = 0.4 and 0.3 x 0.8 = 0.24 pass 0.2; 0.9 x 0.1 = 0.09 does not
    assert gated["image_id"].tolist() == ["a", "a"]
    np.testing.assert_allclose(gated["score"], [0.4, 0.24])
    assert len(gate_boxes(BOXES, PROBS, "product", threshold=0.25)) == 1
    assert len(gate_boxes(BOXES, PROBS["opacity"], "product", threshold=0.0)) == 3  # a Series


def test_first_place_final_cut():
    np.testing.assert_allclose(
        drop_below(boxes(("a", 0.275, 0), ("a", 0.2749, 0)), 0.275)["score"], [0.275]
    )


def test_second_place_sqrt_gate():
    probs = PROBS.assign(opacity=[0.6, 0.1], **{NOT_NORMAL: [0.3, 0.5]})
    gated = gate_boxes(BOXES, probs, "sqrt")
    a = [math.sqrt(0.5 * (0.6 + 0.1 * 0.3)), math.sqrt(0.3 * (0.6 + 0.1 * 0.3))]  # 0.561, 0.435
    b = math.sqrt(0.9 * (0.1 + 0.1 * 0.5))  # 0.367: x 5 = 1.84 > 0.3, kept
    np.testing.assert_allclose(gated["score"], [*a, b])
    weak = gate_boxes(boxes(("b", 0.01, 0)), probs, "sqrt")  # sqrt(0.01 x 0.15) x 5 = 0.19 < 0.3
    assert weak.empty
    np.testing.assert_allclose(
        gate_boxes(BOXES, probs, "sqrt", not_normal_weight=0.0)["score"].iloc[0],
        math.sqrt(0.5 * 0.6),
    )


def test_vinbigdata_two_class_filter():
    findings = boxes(("a", 0.7, 3), ("a", 0.6, 5), ("b", 0.4, 3), ("c", 0.8, 0))
    abnormal = pd.Series({"a": 0.05, "b": 0.4, "c": 0.99, "d": 0.02}, name="opacity")
    gated = gate_boxes(findings, abnormal, "no_finding")
    rows = gated.sort_values(["image_id", "class_id"])[
        ["image_id", "class_id", "score", "x", "y", "w", "h"]
    ]
    assert rows.values.tolist() == [
        ["a", 14, 1.0, 0.0, 0.0, 1.0, 1.0],  # P < 0.08: its findings replaced by "no finding"
        ["b", 3, 0.4, 10.0, 20.0, 30.0, 40.0],  # 0.08 <= P < 0.95: kept, with "no finding" 1 - P
        ["b", 14, 0.6, 0.0, 0.0, 1.0, 1.0],
        ["c", 0, 0.8, 10.0, 20.0, 30.0, 40.0],  # P >= 0.95: kept as it is
        ["d", 14, 1.0, 0.0, 0.0, 1.0, 1.0],  # no boxes and normal
    ]
    assert gated["class_id"].dtype == np.int64


def test_probabilities_must_cover_the_boxed_images():
    with pytest.raises(EnsembleInputError, match="lack 1 boxed image\\(s\\), e.g. 'b'"):
        gate_boxes(BOXES, PROBS.loc[["a"]], "product")
    with pytest.raises(EnsembleInputError, match="lack column 'opacity'"):
        gate_boxes(BOXES, PROBS.rename(columns={"opacity": "p"}), "sqrt")
    with pytest.raises(EnsembleInputError, match="outside \\[0, 1\\]"):
        gate_boxes(BOXES, PROBS.assign(opacity=[1.2, 0.1]), "product")
    with pytest.raises(EnsembleInputError, match="more than once"):
        gate_boxes(BOXES, pd.concat([PROBS, PROBS]), "product")
    with pytest.raises(EnsembleInputError, match="needs image probabilities"):
        gate_boxes(BOXES, None, "product")


@pytest.mark.parametrize(
    ("rule", "params", "message"),
    [
        ("classifier", {}, "gating rule 'classifier' is unknown"),
        ("product", {"thr": 0.2}, "unknown parameter 'thr'"),
        ("product", {"threshold": 2.0}, "threshold must be in"),
        ("sqrt", {"not_normal_weight": -0.1}, "not_normal_weight must be in"),
        ("no_finding", {"low": 0.5, "high": 0.4}, "high must be in \\[0.5, 1\\]"),
        ("no_finding", {"no_finding_class": 14.0}, "no_finding_class must be an integer"),
    ],
)
def test_bad_gating_settings_are_config_errors(rule, params, message):
    with pytest.raises(ConfigError, match=message):
        gate_boxes(BOXES, PROBS, rule, **params)
