"""Detector and anchor-search params: bad input stops with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxrdet.config import validate_params
from cxrdet.errors import ConfigError
from cxrdet.models.retinanet import build_retinanet

ROOT = Path(__file__).resolve().parents[1]


def params_with(**sections: dict) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return raw


@pytest.mark.parametrize(
    ("detector", "message"),
    [
        (
            {"anchors": {"base_size": 0, "scales": [1.0], "ratios": [1.0]}},
            r"detector\.anchors\.base_size: Input should be greater than 0",
        ),
        (
            {"anchors": {"base_size": 2, "scales": [1.0], "ratios": []}},
            r"detector\.anchors\.ratios: List should have at least 1 item",
        ),
        (
            {
                "anchors": {
                    "base_size": 2,
                    "sizes": [16, -8, 32, 64, 128],
                    "scales": [1.0],
                    "ratios": [1.0],
                }
            },
            r"detector\.anchors\.sizes\.1: Input should be greater than 0",
        ),
        ({"tta": {"hflip": True, "scales": [0.8, 1.2]}}, r"detector\.tta: .*must include 1\.0"),
        ({"folds": [0, 7]}, r"detector: .*folds \[7\] do not exist"),
        ({"weights": "none", "frozen_bn": True}, r"detector: .*need loaded weights"),
        ({"weights": "imagenet"}, r"detector\.weights: .*allow_download"),
        ({"loss": {"fg_iou": 0.4, "bg_iou": 0.5}}, r"detector\.loss: .*bg_iou"),
        (
            {"global_head": "boxes"},
            r"detector\.global_head: Input should be 'label', 'opacity' or 'none'",
        ),
    ],
)
def test_bad_detector_params_name_the_key(detector, message):
    with pytest.raises(ConfigError, match=message):
        validate_params(params_with(detector=detector))


def test_pretrain_provides_the_detector_backbone():
    params = validate_params(params_with(detector={"weights": "pretrain", "backbone": "resnet18"}))
    assert params.pretrained_backbones()["resnet18"] == "detector.backbone"
    assert (
        "resnet18"
        not in validate_params(params_with(detector={"weights": "none"})).pretrained_backbones()
    )


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        (
            {"search": {"base_size": {"low": 4.0, "high": 2.0}}},
            r"tune_anchors\.search\.base_size: .*must not exceed",
        ),
        ({"fold": 9}, r"tune_anchors: .*folds \[9\] do not exist"),
        ({"pruner": {"name": "random"}}, r"tune_anchors\.pruner\.name"),
        ({"trials": 0}, r"tune_anchors\.trials: Input should be greater than or equal to 1"),
        ({"budget_fraction": 0}, r"tune_anchors\.budget_fraction: Input should be greater than 0"),
        ({"val_subset": -1}, r"tune_anchors\.val_subset: Input should be greater than or equal"),
    ],
)
def test_bad_anchor_search_params_name_the_key(tune, message):
    with pytest.raises(ConfigError, match=message):
        validate_params(params_with(tune_anchors=tune))


def test_an_image_size_off_the_largest_stride_names_the_key():
    params = validate_params(params_with(detector={"image_size": 96, "weights": "none"})).detector
    with pytest.raises(
        ConfigError,
        match=r"detector\.image_size: 96 is not a multiple of the largest stride 128 .* use 128",
    ):
        build_retinanet(params, num_classes=1, image_classes=3)


def test_anchor_sizes_must_cover_every_level():
    detector = {
        "weights": "none",
        "anchors": {"base_size": 2, "sizes": [16, 32], "scales": [1.0], "ratios": [1.0]},
    }
    params = validate_params(params_with(detector=detector)).detector
    with pytest.raises(
        ConfigError, match=r"detector\.anchors\.sizes: 2 sizes for 5 pyramid levels"
    ):
        build_retinanet(params, num_classes=1, image_classes=0)


def test_unknown_backbone_names_the_key():
    params = validate_params(
        params_with(detector={"backbone": "resnet_nope", "weights": "none"})
    ).detector
    with pytest.raises(ConfigError, match=r"detector\.backbone: unknown timm model 'resnet_nope'"):
        build_retinanet(params, num_classes=1, image_classes=0)
