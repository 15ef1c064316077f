"""RetinaNet: loss on empty images, the global head, dropout, frozen encoder and batch norm,
decoding, model files."""

from __future__ import annotations

import pytest
import torch
from timm.layers.norm_act import FrozenBatchNorm2d, FrozenBatchNormAct2d
from torch import nn

from cxrdet.models.anchors import anchors_from_base
from cxrdet.models.retinanet import (
    DecodeConfig,
    RetinaNet,
    RetinaNetConfig,
    RetinaNetLoss,
    create_detector_backbone,
    decode,
    global_head_probabilities,
    load_detector,
    pyramid_levels,
    save_detector,
)

BACKBONE = "regnetx_002"
SIZE = 128


def tiny_model(p2: bool = False, **overrides) -> RetinaNet:
    torch.manual_seed(0)
    backbone = create_detector_backbone(BACKBONE)
    _, strides = pyramid_levels(backbone.feature_info, p2)
    settings = {"fpn_channels": 16, "head_convs": 1, "image_classes": 3, "p2": p2, **overrides}
    config = RetinaNetConfig(
        BACKBONE, 1, anchors_from_base(2, strides, (1.0, 1.26), (0.5, 1.0, 2.0)), **settings
    )
    return RetinaNet(config, backbone)


def images(count: int) -> torch.Tensor:
    return torch.randn(count, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(count))


@pytest.mark.parametrize("count", [1, 3])
def test_images_without_boxes_give_a_positive_finite_loss(count):
    model = tiny_model()
    criterion = RetinaNetLoss(model.box_coder)
    outputs = model(images(count))
    empty = [torch.zeros(0, 4)] * count
    loss, parts = criterion(
        outputs,
        empty,
        [torch.zeros(0, dtype=torch.int64)] * count,
        torch.zeros(count, dtype=torch.int64),
    )
    assert torch.isfinite(loss) and loss.item() > 0
    assert parts["cls"] > 0 and parts["box"] == 0.0
    loss.backward()  # every head takes part, even with no positive anchor
    assert model.box_head.out.weight.grad is not None


def test_mixed_batch_loss_counts_both_heads():
    model = tiny_model()
    criterion = RetinaNetLoss(model.box_coder)
    boxes = [torch.tensor([[30.0, 40.0, 50.0, 58.0]]), torch.zeros(0, 4)]
    labels = [torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)]
    loss, parts = criterion(model(images(2)), boxes, labels, torch.tensor([2, 0]))
    assert parts["box"] > 0 and parts["global"] > 0
    assert loss.item() == pytest.approx(
        parts["cls"] + parts["box"] + 0.1 * parts["global"], rel=1e-5
    )


def test_global_head_output_shape():
    model = tiny_model().eval()
    outputs = model(images(2))
    assert outputs["image_logits"].shape == (2, 3)
    probs = global_head_probabilities(outputs)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2))
    assert "image_logits" not in tiny_model(image_classes=0).eval()(images(1))


def test_dropout_only_in_training():
    model = tiny_model(cls_dropout=0.5, global_dropout=0.5)
    x = images(1)
    model.train()
    assert not torch.equal(model(x)["cls_logits"], model(x)["cls_logits"])
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first["cls_logits"], second["cls_logits"])
    assert torch.equal(first["image_logits"], second["image_logits"])


def test_frozen_encoder_gets_no_gradient_and_keeps_its_statistics():
    model = tiny_model().train()
    model.freeze_encoder(True)
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    before = norms[0].running_mean.clone()
    model(images(2))["cls_logits"].sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.fpn.inner_blocks[0][0].weight.grad is not None
    assert torch.equal(norms[0].running_mean, before)
    model.train()  # the loop calls train() every epoch: the encoder stays in eval mode
    assert not model.backbone.training and model.fpn.training
    model.freeze_encoder(False)
    assert model.backbone.training


def test_frozen_batch_norm_option():
    model = tiny_model(frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(
        isinstance(m, (FrozenBatchNorm2d, FrozenBatchNormAct2d)) for m in model.backbone.modules()
    )


def test_decode_keeps_top_k_boxes_inside_the_image():
    model = tiny_model().eval()
    with torch.no_grad():
        outputs = model(images(2))
    outputs["cls_logits"] = torch.randn_like(outputs["cls_logits"]) * 3  # many confident anchors
    config = DecodeConfig(score_floor=0.05, nms_iou=0.5, top_k=7, candidates=200)
    detections = decode(outputs, model.box_coder, (SIZE, SIZE), config)
    assert len(detections) == 2
    for found in detections:
        assert 0 < len(found.boxes) <= 7
        assert (found.boxes >= 0).all() and (found.boxes <= SIZE).all()
        assert (found.scores > 0.05).all() and (found.labels == 0).all()
        assert torch.all(found.scores[:-1] >= found.scores[1:])


def test_model_file_round_trip(tmp_path):
    model = tiny_model().eval()
    save_detector(tmp_path / "model.pt", model, {"image_size": SIZE})
    loaded, config = load_detector(tmp_path / "model.pt")
    assert config["image_size"] == SIZE
    x = images(1)
    with torch.no_grad():
        assert torch.equal(model(x)["cls_logits"], loaded.eval()(x)["cls_logits"])


@pytest.mark.parametrize("channels", [16, 32, 64])
def test_normalised_heads_predict_a_single_image_whose_top_level_is_one_pixel(channels):
    model = tiny_model(fpn_channels=channels, head_norm=True).eval()
    with torch.no_grad():
        outputs = model(images(1))  # P7 of a 128 px image is 1x1: groups need 2+ channels
    assert torch.isfinite(outputs["cls_logits"]).all()
