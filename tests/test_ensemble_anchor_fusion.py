"""2nd place anchor-level fold fusion on hand-made head outputs."""

from __future__ import annotations

import math

import pytest
import torch

from cxrdet.ensemble import EnsembleInputError
from cxrdet.ensemble.anchor_fusion import AnchorFusionParams, decode_fused, fuse_anchor_outputs
from cxrdet.errors import ConfigError


def deltas_of(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_probabilities_and_positions_are_means_sizes_the_low_percentile_pushed_down():
    # 3 models, 1 image, 1 anchor, 1 class; models in no particular order
    probs = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64).view(3, 1, 1, 1)
    deltas = deltas_of([0.3, 0.1, 0.4, 0.2], [0.0, 0.2, 0.0, 0.2], [-0.3, 0.3, 0.1, 0.2]).view(
        3, 1, 1, 4
    )
    fused_probs, fused = fuse_anchor_outputs(probs, deltas)
    assert fused_probs.shape == (1, 1, 1) and fused.shape == (1, 1, 4)
    assert fused_probs.item() == pytest.approx(0.6)
    # dw sorted 0, 0.1, 0.4: p20 at position 0.4 -> 0.04, p80 at 1.6 -> 0.1 + 0.6 x 0.3 = 0.28
    # size = 0.04 + (0.04 - 0.28) x 0.9 = -0.176; dh all 0.2: no spread, stays 0.2
    torch.testing.assert_close(fused.view(4), deltas_of([0.0, 0.2, -0.176, 0.2]).view(4))


def test_four_folds_as_the_second_place():
    deltas = torch.zeros(4, 2, 3, 4)  # 4 models, 2 images, 3 anchors
    deltas[..., 2] = torch.tensor([3.0, 0.0, 2.0, 1.0]).view(4, 1, 1)
    probs = torch.full((4, 2, 3, 2), 0.5)
    _, fused = fuse_anchor_outputs(probs, deltas)
    # p20 at position 0.6 -> 0.6, p80 at 2.4 -> 2.4: 0.6 + (0.6 - 2.4) x 0.9 = -1.02
    torch.testing.assert_close(fused[..., 2], torch.full((2, 3), -1.02))
    _, plain = fuse_anchor_outputs(
        probs, deltas, AnchorFusionParams(spread=0.0, low_percentile=50.0)
    )
    torch.testing.assert_close(plain[..., 2], torch.full((2, 3), 1.5))  # the median


def test_one_model_is_left_as_it_is():
    probs, deltas = torch.rand(1, 1, 5, 2), torch.randn(1, 1, 5, 4)
    fused_probs, fused = fuse_anchor_outputs(probs, deltas)
    torch.testing.assert_close(fused_probs, probs[0])
    torch.testing.assert_close(fused, deltas[0])


def test_decoding_thresholds_suppresses_and_drops_weak_boxes():
    anchors = torch.tensor(
        [
            [0, 0, 32, 32],
            [4, 0, 36, 32],  # IoU 896 / 1152 with the first: suppressed at NMS 0.05
            [64, 64, 96, 96],  # grows to 64 x 64 about its centre (80, 80)
            [0, 64, 32, 96],  # 0.3 < half the top score 0.8: dropped
            [64, 0, 96, 32],  # under the 0.025 floor
            [0, 0, 32, 32],  # class 1 only: another class, not suppressed by class 0
        ],
        dtype=torch.float32,
    )
    probs = torch.tensor([[0.8, 0], [0.7, 0], [0.5, 0], [0.3, 0], [0.02, 0], [0, 0.45]]).unsqueeze(
        0
    )
    deltas = torch.zeros(1, 6, 4)
    deltas[0, 2, 2:] = 5 * math.log(2)  # box coder weights 5 for dw, dh: x 2
    (found,) = decode_fused(probs, deltas, anchors, image_size=(100, 200))
    # height 100 clips the grown box's bottom (112 -> 100); width 200 leaves its right side
    expected = torch.tensor([[0.0, 0, 32, 32], [48, 48, 112, 100], [0, 0, 32, 32]])
    torch.testing.assert_close(found.boxes, expected)
    torch.testing.assert_close(found.scores, torch.tensor([0.8, 0.5, 0.45]))
    assert found.labels.tolist() == [0, 0, 1]
    loose = decode_fused(
        probs, deltas, anchors, (100, 200), AnchorFusionParams(top_ratio=0.0, nms_iou=0.9)
    )[0]
    assert loose.scores.tolist() == pytest.approx([0.8, 0.7, 0.5, 0.45, 0.3])
    assert loose.labels.tolist() == [0, 0, 0, 1, 0]


def test_fused_models_decode_into_one_box():
    anchors = torch.tensor([[10.0, 10, 50, 50]])
    probs = torch.tensor([0.6, 0.2]).view(2, 1, 1, 1)
    deltas = torch.zeros(2, 1, 1, 4)
    deltas[:, 0, 0, 0] = torch.tensor([1.0, 3.0])  # dx / 10 of the anchor width: mean 0.2 x 40 = 8
    found = decode_fused(*fuse_anchor_outputs(probs, deltas), anchors, (100, 100))[0]
    torch.testing.assert_close(found.boxes, torch.tensor([[18.0, 10, 58, 50]]))
    torch.testing.assert_close(found.scores, torch.tensor([0.4]))


def test_bad_inputs_and_params():
    with pytest.raises(EnsembleInputError, match="one grid"):
        fuse_anchor_outputs(torch.rand(2, 1, 5, 1), torch.rand(2, 1, 4, 4))
    with pytest.raises(EnsembleInputError, match="sigmoid"):
        fuse_anchor_outputs(torch.full((2, 1, 5, 1), 3.0), torch.rand(2, 1, 5, 4))
    with pytest.raises(ConfigError, match="high_percentile must be in \\[20, 100\\]"):
        AnchorFusionParams(high_percentile=10.0)
    with pytest.raises(ConfigError, match="top_k must be a positive integer"):
        AnchorFusionParams(top_k=0)
