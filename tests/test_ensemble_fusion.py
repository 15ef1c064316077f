"""Box fusion: the 1st place's vote merge, WBF, NMS and soft-NMS on hand-made boxes.

Expected boxes and scores are worked out by hand in each test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxrdet.ensemble import EnsembleInputError, fuse_boxes
from cxrdet.errors import ConfigError

COLUMNS = ["image_id", "fold", "model", "view", "x", "y", "w", "h", "score", "class_id"]


def table(*rows: tuple) -> pd.DataFrame:
    """Rows (image_id, fold, view, x, y, w, h, score[, class_id]) of model "m"."""
    full = [(r[0], r[1], "m", *r[2:8], r[8] if len(r) > 8 else 0) for r in rows]
    frame = pd.DataFrame(full, columns=COLUMNS)
    return frame.astype({"class_id": np.int64, "fold": np.int64})


# Two views agree on one box (IoU 360 / 400 = 0.9); the original view alone has a second.
AGREED = table(
    ("a", 0, "original", 10, 10, 20, 20, 0.8),
    ("a", 0, "hflip", 12, 10, 18, 20, 0.4),
    ("a", 0, "original", 100, 100, 10, 10, 0.5),
)
SIZES = {"a": (200.0, 200.0)}


def boxes_of(frame: pd.DataFrame) -> np.ndarray:
    return frame[["x", "y", "w", "h", "score"]].to_numpy(dtype=np.float64)


# Fusion over views keeps the other key columns, then the box.
FUSED_COLUMNS = ["image_id", "fold", "model", "x", "y", "w", "h", "score", "class_id"]


def test_vote_merge_averages_by_confidence_and_scales_by_votes():
    fused = fuse_boxes(AGREED, "vote")
    assert list(fused.columns) == FUSED_COLUMNS
    # x = (0.8*10 + 0.4*12) / 1.2, w = (0.8*20 + 0.4*18) / 1.2,
    # confidence = (0.8*0.8 + 0.4*0.4) / 1.2 = 2/3, votes 2 of 2 views;
    # the lone box: confidence 0.5 x votes 1/2.
    expected = [
        [12.8 / 1.2, 10, 23.2 / 1.2, 20, 0.8 / 1.2],
        [100, 100, 10, 10, 0.25],
    ]
    np.testing.assert_allclose(boxes_of(fused), expected)
    assert fused["class_id"].tolist() == [0, 0]


def test_vote_merge_counts_members_without_boxes():
    members = pd.DataFrame(
        {"image_id": "a", "fold": 0, "model": "m", "view": ["original", "hflip", "scale0.8"]}
    )
    fused = fuse_boxes(AGREED, "vote", members=members)
    # 3 views predicted the image: votes 2/3 and 1/3.
    np.testing.assert_allclose(fused["score"], [(0.8 / 1.2) * 2 / 3, 0.5 / 3])


def test_vote_merge_weights_members():
    fused = fuse_boxes(AGREED, "vote", weights={"original": 3.0, "hflip": 1.0})
    # shares 0.75 / 0.25; box weights share x confidence = 0.6 and 0.1.
    x = (0.6 * 10 + 0.1 * 12) / 0.7
    confidence = (0.6 * 0.8 + 0.1 * 0.4) / 0.7
    np.testing.assert_allclose(
        boxes_of(fused)[0], [x, 10, (0.6 * 20 + 0.1 * 18) / 0.7, 20, confidence]
    )
    np.testing.assert_allclose(fused["score"].iloc[1], 0.5 * 0.75)


def test_vote_merge_takes_each_members_best_iou_box_once():
    boxes = table(
        ("a", 0, "original", 0, 0, 10, 10, 0.9),
        ("a", 0, "hflip", 1, 0, 10, 10, 0.6),  # IoU 90 / 110 with the first
        ("a", 0, "hflip", 0, 0, 10, 10, 0.3),  # IoU 1: the one that joins
    )
    fused = fuse_boxes(boxes, "vote")
    # [0 0 10 10] merged: confidence (0.81 + 0.09) / 1.2, 2 of 2 votes; the 0.6 box is
    # left alone (the original view's box is used): 0.6 x 1/2.
    np.testing.assert_allclose(boxes_of(fused), [[0, 0, 10, 10, 0.75], [1, 0, 10, 10, 0.3]])


def test_vote_merge_needs_iou_above_the_threshold():
    boxes = table(
        ("a", 0, "original", 0, 0, 10, 10, 0.5),
        ("a", 0, "hflip", 0, 0, 4, 10, 0.5),  # IoU exactly 40 / 100
    )
    assert len(fuse_boxes(boxes, "vote", iou_thr=0.4)) == 2
    merged = fuse_boxes(boxes, "vote", iou_thr=0.39)
    np.testing.assert_allclose(boxes_of(merged), [[0, 0, 7, 10, 0.5]])


def test_fusion_keeps_classes_and_images_apart():
    boxes = pd.concat(
        [
            AGREED,
            table(("a", 0, "hflip", 10, 10, 20, 20, 0.7, 1)),  # same place, other class
            table(("b", 0, "hflip", 10, 10, 20, 20, 0.6)),  # same place, other image
        ],
        ignore_index=True,
    )
    fused = fuse_boxes(boxes, "vote")
    assert fused[["image_id", "class_id"]].values.tolist() == [
        ["a", 0],
        ["a", 0],
        ["a", 1],
        ["b", 0],
    ]
    np.testing.assert_allclose(fused["score"], [0.8 / 1.2, 0.25, 0.35, 0.6])


def test_fusion_in_two_stages_views_then_folds():
    boxes = pd.concat(
        [
            AGREED,
            table(
                ("a", 1, "original", 10, 10, 20, 20, 0.5), ("a", 1, "hflip", 10, 10, 20, 20, 0.5)
            ),
        ],
        ignore_index=True,
    )
    per_fold = fuse_boxes(boxes, "vote", over=["view"])
    assert per_fold["fold"].tolist() == [0, 0, 1]
    final = fuse_boxes(per_fold, "vote", over=["fold", "model"])
    assert list(final.columns[:1]) == ["image_id"] and "fold" not in final.columns
    # fold 0 gives (10.667, 10, 19.333, 20) at 2/3, fold 1 (10, 10, 20, 20) at 0.5;
    # weights = confidence: x = (2/3 * 10.667 + 0.5 * 10) / (2/3 + 0.5), votes 2 of 2.
    total = 2 / 3 + 0.5
    x = (2 / 3 * 12.8 / 1.2 + 0.5 * 10) / total
    confidence = ((2 / 3) ** 2 + 0.25) / total
    np.testing.assert_allclose(
        boxes_of(final)[0], [x, 10, 30 - x, 20, confidence]
    )  # right edges at 30
    np.testing.assert_allclose(final["score"].iloc[1], 0.25 * 0.5)


def test_wbf_normalises_by_image_size_and_scores_like_ensemble_boxes():
    fused = fuse_boxes(AGREED, "wbf", SIZES, iou_thr=0.55)
    # avg: the box is the confidence-weighted mean, the score the mean confidence
    # (0.8 + 0.4) / 2 x min(2 members, 2 boxes) / 2; the lone box 0.5 x 1 / 2.
    expected = [[12.8 / 1.2, 10, 23.2 / 1.2, 20, 0.6], [100, 100, 10, 10, 0.25]]
    np.testing.assert_allclose(boxes_of(fused), expected, atol=1e-4)


def test_wbf_conf_types_and_absent_members():
    members = pd.DataFrame(
        {"image_id": "a", "fold": 0, "model": "m", "view": ["original", "hflip", "scale0.8"]}
    )
    fused = fuse_boxes(AGREED, "wbf", SIZES, members=members)
    np.testing.assert_allclose(fused["score"], [0.6 * 2 / 3, 0.5 / 3], atol=1e-6)
    assert fuse_boxes(AGREED, "wbf", SIZES, conf_type="max")["score"].iloc[0] == pytest.approx(0.8)


def test_wbf_clips_and_drops_bad_boxes_without_warnings():
    boxes = table(
        ("a", 0, "original", 190, 190, 20, 20, 0.8),  # crosses the corner: clipped to 190-200
        ("a", 0, "hflip", 190, 190, 10, 10, 0.8),
        ("a", 0, "original", 250, 250, 10, 10, 0.9),  # outside: no area once clipped
        ("a", 0, "hflip", 50, 50, 0, 10, 0.9),  # zero width
        ("a", 0, "hflip", 10, 10, 10, 10, 0.01),  # under skip_box_thr
    )
    # pytest turns ensemble_boxes' UserWarnings into errors (pyproject.toml).
    fused = fuse_boxes(
        boxes,
        "wbf",
        pd.DataFrame({"image_id": ["a"], "width": [200], "height": [200]}),
        skip_box_thr=0.05,
    )
    np.testing.assert_allclose(boxes_of(fused), [[190, 190, 10, 10, 0.8]], atol=1e-4)


def test_wbf_needs_the_size_of_every_image():
    with pytest.raises(EnsembleInputError, match="sizes"):
        fuse_boxes(AGREED, "wbf")
    with pytest.raises(EnsembleInputError, match="'a'"):
        fuse_boxes(AGREED, "wbf", {"b": (10.0, 10.0)})


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = table(
        ("a", 0, "original", 0, 0, 10, 10, 0.9),
        ("a", 0, "hflip", 1, 0, 10, 10, 0.8),  # IoU 90 / 110 = 0.82
        ("a", 0, "hflip", 20, 20, 10, 10, 0.7),
        ("a", 0, "hflip", 0, 0, 10, 10, 0.6, 1),  # another class: not suppressed
    )
    np.testing.assert_allclose(
        boxes_of(fuse_boxes(boxes, "nms")),
        [[0, 0, 10, 10, 0.9], [20, 20, 10, 10, 0.7], [0, 0, 10, 10, 0.6]],
    )
    assert len(fuse_boxes(boxes, "nms", iou_thr=0.85)) == 4


def test_soft_nms_decays_overlapping_scores():
    boxes = table(
        ("a", 0, "original", 0, 0, 10, 10, 0.9),
        ("a", 0, "hflip", 1, 0, 10, 10, 0.8),
        ("a", 0, "hflip", 20, 20, 10, 10, 0.7),
    )
    iou = 90 / 110
    gaussian = 0.8 * math.exp(-(iou**2) / 0.5)  # about 0.21
    np.testing.assert_allclose(
        boxes_of(fuse_boxes(boxes, "soft_nms")),
        [[0, 0, 10, 10, 0.9], [20, 20, 10, 10, 0.7], [1, 0, 10, 10, gaussian]],
    )
    assert len(fuse_boxes(boxes, "soft_nms", score_thr=0.3)) == 2
    linear = fuse_boxes(boxes, "soft_nms_linear")
    np.testing.assert_allclose(linear["score"], [0.9, 0.7, 0.8 * (1 - iou)])
    assert fuse_boxes(boxes, "soft_nms_linear", iou_thr=0.9)["score"].iloc[1] == pytest.approx(0.8)


def test_no_boxes_give_an_empty_table():
    fused = fuse_boxes(AGREED.iloc[:0], "vote")
    assert fused.empty and list(fused.columns) == FUSED_COLUMNS


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("mean", {}, "fusion method 'mean' is unknown"),
        ("vote", {"iou": 0.4}, "unknown parameter 'iou'"),
        ("vote", {"iou_thr": 1.5}, "iou_thr must be in"),
        ("wbf", {"conf_type": "mean"}, "conf_type must be one of"),
        ("soft_nms", {"sigma": 0}, "sigma must be in"),
        ("nms", {"iou_thr": "0.5"}, "iou_thr must be a number"),
        ("vote", {"over": ["image_id"]}, "fusion over"),
        ("vote", {"over": ["reader"]}, "fusion over"),
        ("vote", {"weights": {"original": 1.0}}, "no weight for member 'hflip'"),
        ("vote", {"weights": {"original": 1.0, "hflip": 0.0}}, "weights\\['hflip'\\]"),
    ],
)
def test_bad_fusion_settings_are_config_errors(method, params, message):
    with pytest.raises(ConfigError, match=message):
        fuse_boxes(AGREED, method, SIZES, **params)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.assign(w=[-1.0, 1.0, 1.0]), "negative width"),
        (lambda t: t.assign(score=[1.2, 0.5, 0.5]), "scores outside"),
        (lambda t: t.assign(x=[np.nan, 1.0, 1.0]), "NaN"),
        (lambda t: t.drop(columns="score"), "lacks columns \\['score'\\]"),
        (lambda t: t.assign(class_id=[0.0, 0.0, 0.0]), "class_id must be integers"),
    ],
)
def test_bad_boxes_are_input_errors(change, message):
    with pytest.raises(EnsembleInputError, match=message):
        fuse_boxes(change(AGREED), "vote")


def test_members_must_cover_every_box():
    members = pd.DataFrame({"image_id": "a", "fold": 0, "model": "m", "view": ["original"]})
    with pytest.raises(EnsembleInputError, match="members lack"):
        fuse_boxes(AGREED, "vote", members=members)
