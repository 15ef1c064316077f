"""Detector TTA views: names, images, boxes mapped back, and the prediction tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrdet.config import TrainParams
from cxrdet.data.datasets import normalize
from cxrdet.infer.detector_tta import (
    BOX_COLUMNS,
    DetectionView,
    ViewDataset,
    ViewPredictions,
    boxes_from_view,
    detection_views,
    predict_views,
    prediction_tables,
    view_image,
)
from cxrdet.models.anchors import anchors_from_base
from cxrdet.models.retinanet import (
    DecodeConfig,
    RetinaNet,
    RetinaNetConfig,
    create_detector_backbone,
    pyramid_levels,
)

SIZE = 128
RUNTIME = TrainParams(device="cpu", progress=False, channels_last=False)


def test_views_default_to_the_six_of_the_first_place():
    views = detection_views(True, [0.8, 1.0, 1.2])
    assert [v.name for v in views] == [
        "original",
        "scale0.8",
        "scale1.2",
        "hflip",
        "hflip_scale0.8",
        "hflip_scale1.2",
    ]
    assert [v.name for v in detection_views(False, [1.0])] == ["original"]


@pytest.mark.parametrize("view", detection_views(True, [0.8, 1.0, 1.2]), ids=lambda v: v.name)
def test_boxes_map_back_from_every_view(view):
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[30:50, 20:60] = 255  # a lesion at x 20-60, y 30-50
    shown, factor, side = view_image(image, view, multiple=32)
    assert shown.shape[0] % 32 == 0 and shown.shape[0] >= side
    ys, xs = np.nonzero(shown > 127)
    in_view = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
    assert np.abs(boxes_from_view(in_view, view, factor, SIZE) - [[20, 30, 60, 50]]).max() <= 1.0


class IoUDetector(nn.Module):
    """A flip-equivariant stand-in for a trained RetinaNet: an anchor's logit is its IoU with
    the bright pixels, its deltas are zero. Real anchor grid, box coder and decoding."""

    def __init__(self, model: RetinaNet) -> None:
        super().__init__()
        self.model = model
        self.box_coder, self.pad_multiple = model.box_coder, model.pad_multiple

    detect = RetinaNet.detect  # decoded like the RetinaNet it stands in for

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = images.shape
        anchors = self.model.anchor_generator.grid(
            [torch.zeros(1, 1, h // s, w // s) for s in self.model.strides]
        )
        bright = (images[:, 0] > 0).float()
        integral = nn.functional.pad(bright.cumsum(1).cumsum(2), (1, 0, 1, 0))
        x0, x1 = (anchors[:, [0, 2]].clamp(0, w).round().long()).T
        y0, y1 = (anchors[:, [1, 3]].clamp(0, h).round().long()).T
        inside = (
            integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]
        )
        area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        iou = inside / (area + bright.sum(dim=(1, 2))[:, None] - inside)
        return {
            "cls_logits": (20 * (iou - 0.5))[..., None],
            "box_deltas": torch.zeros(n, len(anchors), 4),
            "anchors": anchors,
        }


class Images:
    """CachedImages stand-in: in-memory uint8 images."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.arrays = images
        self.image_ids = [f"img{k}" for k in range(len(images))]

    def __len__(self) -> int:
        return len(self.arrays)

    def read(self, index: int, size: int) -> np.ndarray:
        return self.arrays[index]


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "one-sided"])
def test_hflip_predictions_mapped_back_match_the_original(symmetric):
    backbone = create_detector_backbone("regnetx_002")
    _, strides = pyramid_levels(backbone.feature_info, True)
    config = RetinaNetConfig(
        "regnetx_002",
        1,
        anchors_from_base(4, strides, (1.0, 1.26), (0.5, 1.0, 2.0)),
        fpn_channels=8,
        head_convs=0,
    )
    detector = IoUDetector(RetinaNet(config, backbone))
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[36:56, 22:40] = 255
    if symmetric:  # lesions in both lungs
        image[:, SIZE // 2 :] = image[:, : SIZE // 2][:, ::-1]
    else:  # a second, different lesion: a mapping that forgot to un-flip would fail here
        image[68:88, 70:88] = (
            255  # the first one moved on the anchor grid; its mirror is at x 88-106
        )
    views = [DetectionView(), DetectionView(hflip=True)]
    original, flipped = predict_views(
        detector,
        Images([image]),
        size=SIZE,
        views=views,
        decode_config=DecodeConfig(score_floor=0.3, nms_iou=0.3, top_k=2),
        batch_size=1,
        device=torch.device("cpu"),
        runtime=RUNTIME,
    )
    assert len(original.boxes[0]) == 2
    ours, theirs = (np.array(sorted(v.boxes[0].tolist())) for v in (original, flipped))
    assert np.abs(ours - theirs).max() <= 1.0
    assert np.allclose(np.sort(original.scores[0]), np.sort(flipped.scores[0]), atol=1e-4)


def test_prediction_tables_follow_the_contract():
    images = pd.DataFrame({"image_id": ["a", "b"], "width": [256, 512], "height": [256, 256]})
    view = ViewPredictions(
        DetectionView(hflip=True),
        [np.array([[10.0, 20.0, 30.0, 60.0]]), np.zeros((0, 4))],
        [np.array([0.9])],
        [np.array([0])],
        np.array([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]]),
    )
    view.scores.append(np.zeros(0))
    view.labels.append(np.zeros(0, np.int64))
    boxes, table = prediction_tables(
        [view],
        ["a", "b"],
        images,
        128,
        fold=2,
        model="m",
        image_classes=["n", "o", "p"],
        positive=[2],
    )
    assert list(boxes.columns) == BOX_COLUMNS
    assert boxes.iloc[0].to_dict() == {
        "image_id": "a",
        "fold": 2,
        "model": "m",
        "view": "hflip",
        "x": 20.0,
        "y": 40.0,
        "w": 40.0,
        "h": 80.0,
        "score": 0.9,
        "class_id": 0,
    }
    assert list(table.columns) == [
        "image_id",
        "fold",
        "model",
        "view",
        "p_n",
        "p_o",
        "p_p",
        "opacity",
    ]
    assert table["opacity"].tolist() == [0.5, 0.1] and len(table) == 2


def test_view_images_are_padded_and_normalised_like_training():
    view = DetectionView(scale=0.8)
    image = np.full((SIZE, SIZE), 255, np.uint8)
    shown, _, side = view_image(image, view, multiple=32)
    assert side == 102 and shown.shape == (128, 128)
    assert shown[:side, :side].min() == 255 and shown[side:, :].max() == 0  # padding, not content
    item = ViewDataset(Images([image]), SIZE, view, 32)[0]["image"]
    assert torch.equal(item, normalize(shown))
