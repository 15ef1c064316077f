"""Modulated deformable convolutions: a converted layer starts as the plain convolution,
backbone stages are found by stride, and a bad stage is reported by its params key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrdet.errors import ConfigError
from cxrdet.models.deformable import (
    ModulatedDeformConv2d,
    backbone_stages,
    deformable_layers,
    make_deformable,
)
from cxrdet.models.retinanet import create_detector_backbone

KEY = "detector.two_stage.deformable"


@pytest.mark.parametrize(
    ("stride", "dilation", "groups", "bias"), [(1, 1, 1, True), (2, 1, 1, False), (1, 2, 2, True)]
)
def test_zero_offsets_give_the_plain_convolution(stride, dilation, groups, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(
        4, 6, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=bias
    )
    layer = ModulatedDeformConv2d.from_conv(conv)
    x = torch.randn(2, 4, 13, 11)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-5)
    # Offsets from a non-zero conv move the samples: the outputs part ...
    nn.init.normal_(layer.offset.weight, std=0.5)
    assert (layer(x) - conv(x)).abs().max() > 1e-2
    # ... and forcing them back to zero (mask 1) gives the plain convolution again.
    offsets, _ = layer.offsets_and_masks(x)
    ones = torch.ones(offsets.shape[0], offsets.shape[1] // 2, *offsets.shape[2:])
    torch.testing.assert_close(
        super(ModulatedDeformConv2d, layer).forward(x, torch.zeros_like(offsets), ones),
        conv(x),
        atol=1e-5,
        rtol=1e-5,
    )


def test_converted_stage_keeps_outputs_and_weight_names():
    torch.manual_seed(0)
    backbone = create_detector_backbone("test_resnet").eval()
    x = torch.randn(2, 1, 64, 64)
    before = [f.detach() for f in backbone(x)]
    keys = set(backbone.state_dict())
    converted = make_deformable(backbone, [4, 5], "test_resnet", KEY)
    assert (
        converted == len(deformable_layers(backbone)) == 3
    )  # test_resnet: C4 one 3x3 conv, C5 two
    for old, new in zip(before, backbone(x)):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
    added = set(backbone.state_dict()) - keys
    assert keys <= set(backbone.state_dict()) and added and all(".offset." in key for key in added)


def test_stages_are_named_by_stride():
    backbone = create_detector_backbone("test_resnet")
    stages = backbone_stages(backbone)
    assert sorted(stages) == [1, 2, 3, 4, 5]
    assert all(name.startswith("layer4") for name in stages[5])


def test_a_missing_stage_or_one_without_3x3_convs_names_the_key():
    with pytest.raises(
        ConfigError,
        match=rf"{KEY}: C6 is not a stage of 'test_resnet'; its stages are C1 \(stride 2\).*C5",
    ):
        make_deformable(create_detector_backbone("test_resnet"), [6], "test_resnet", KEY)
    # C1 of resnet18 is its 7x7 stem: nothing to make deformable.
    with pytest.raises(
        ConfigError, match=rf"{KEY}: stage C1 of 'resnet18' has no plain 3x3 convolution"
    ):
        make_deformable(create_detector_backbone("resnet18"), [1], "resnet18", KEY)
