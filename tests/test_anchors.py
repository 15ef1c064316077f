"""Anchors: per-level grids with the backbone's strides, counts derived from the config,
fitness (best possible recall) and the small-box warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrdet.errors import ConfigError
from cxrdet.models.anchors import (
    AnchorConfig,
    AnchorWarning,
    StridedAnchorGenerator,
    anchors_from_base,
    best_possible_recall,
    smallest_matchable_side,
    warn_unmatchable,
)
from cxrdet.models.retinanet import (
    RetinaNet,
    RetinaNetConfig,
    create_detector_backbone,
    pyramid_levels,
)

REFERENCE = ((1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0))


def feature_maps(sizes: list[int]) -> list[torch.Tensor]:
    return [torch.zeros(1, 1, s, s) for s in sizes]


@pytest.mark.parametrize(
    ("strides", "sizes"),
    [((4, 8, 16, 32, 64, 128), [32, 16, 8, 4, 2, 1]), ((8, 16, 32, 64, 128), [16, 8, 4, 2, 1])],
    ids=["P2-P7", "P3-P7"],
)
def test_grid_shapes_per_level(strides, sizes):
    config = anchors_from_base(4, strides, *REFERENCE)
    anchors = StridedAnchorGenerator(config, strides).grid(feature_maps(sizes))
    assert anchors.shape == (sum(s * s for s in sizes) * 9, 4)
    # Level by level: the reference sizes 2^(l+2) (P3: 32 px), every anchor centred on a cell.
    start = 0
    for stride, size in zip(strides, sizes):
        level = anchors[start : start + size * size * 9].view(size, size, 9, 4)
        start += size * size * 9
        centres = (level[..., :2] + level[..., 2:]) / 2
        expected = (torch.arange(size) + 0.5) * stride
        assert torch.allclose(centres[0, :, 0, 0], expected)  # x along a row
        assert torch.allclose(centres[:, 0, 0, 1], expected)  # y down a column
        square = level[0, 0, 3]  # ratio 1, scale 1
        assert float(square[2] - square[0]) == pytest.approx(4 * stride, abs=1)


def test_strides_come_from_the_backbone_not_from_division():
    # An unpadded backbone: 29/14/6 cells for a 256 input at strides 8/16/32 (PITFALLS).
    config = anchors_from_base(4, (8, 16, 32), (1.0,), (1.0,))
    anchors = StridedAnchorGenerator(config, (8, 16, 32)).grid(feature_maps([29, 14, 6]))
    level16 = anchors[29 * 29 : 29 * 29 + 14 * 14].view(14, 14, 4)
    centres_x = (level16[0, :, 0] + level16[0, :, 2]) / 2
    assert torch.allclose(centres_x, (torch.arange(14) + 0.5) * 16)  # not 256 // 14 = 18


def test_grid_is_cached_per_shape():
    config = anchors_from_base(4, (8, 16), (1.0,), (1.0,))
    generator = StridedAnchorGenerator(config, (8, 16))
    first = generator.grid(feature_maps([4, 2]))
    assert generator.grid(feature_maps([4, 2])) is first
    assert generator.grid(feature_maps([6, 3])).shape[0] == 36 + 9


@pytest.mark.parametrize("p2", [True, False])
def test_model_anchors_match_head_outputs_for_a_non_3x3_grid(p2):
    backbone = create_detector_backbone("regnetx_002")
    _, strides = pyramid_levels(backbone.feature_info, p2)
    assert strides[: 4 if p2 else 3] == tuple(
        backbone.feature_info.reduction()[-(4 if p2 else 3) :]
    )
    anchors = anchors_from_base(4, strides, (1.0, 1.5), (0.25, 0.5, 1.0, 2.0))  # 8 per location
    model = RetinaNet(
        RetinaNetConfig("regnetx_002", 2, anchors, p2=p2, fpn_channels=16, head_convs=1), backbone
    )
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 128, 128))
    cells = sum((128 // s) ** 2 for s in strides)
    assert out["anchors"].shape == (cells * 8, 4)
    assert out["cls_logits"].shape == (1, cells * 8, 2)
    assert out["box_deltas"].shape == (1, cells * 8, 4)


def test_best_possible_recall():
    anchors = np.array([[16.0, 16.0]])
    boxes = np.array([[16.0, 16.0], [5.0, 16.0], [3.0, 16.0], [16.0, 70.0]])
    # ratios: 1, 0.31 (> 1/4: fits), 0.19 (no), 0.23 (no)
    assert best_possible_recall(boxes, anchors) == pytest.approx(0.5)
    assert best_possible_recall(np.zeros((0, 2)), anchors) == 1.0


def test_small_boxes_warn():
    config = anchors_from_base(4, (8, 16), (1.0,), (1.0,))  # smallest anchor 32 px
    assert smallest_matchable_side(config, 0.5) == pytest.approx(32 / np.sqrt(2))
    with pytest.warns(AnchorWarning, match="1 of 2 training boxes"):
        assert warn_unmatchable(np.array([[10.0, 30.0], [30.0, 30.0]]), config, 0.5) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"sizes": [16, -1], "scales": [1], "ratios": [1]},
            r"anchors\.sizes: values must be positive",
        ),
        (
            {"sizes": [16], "scales": [1], "ratios": []},
            r"anchors\.ratios: must list at least one value",
        ),
        ({"sizes": [16], "scales": [float("nan")], "ratios": [1]}, r"anchors\.scales"),
        ({"sizes": [16], "ratios": [1]}, r"anchors: missing \['scales'\]"),
    ],
)
def test_bad_anchor_files_name_the_key(content, message):
    with pytest.raises(ConfigError, match=message):
        AnchorConfig.from_dict(content, key="anchors")


def test_sizes_must_cover_every_level():
    with pytest.raises(ConfigError, match="2 sizes for 3 pyramid levels"):
        StridedAnchorGenerator(AnchorConfig((16.0, 32.0), (1.0,), (1.0,)), (8, 16, 32))
