"""The deformable two-stage detector: losses (images without boxes too), detections, the
relation module, save/load, params errors by key, and a short training on the shared loop
that lowers the loss and moves the deformable offsets off zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import Dataset

from cxrdet.config import OptimParams, TrainParams, validate_params
from cxrdet.data.datasets import normalize
from cxrdet.data.detection import collate_detection
from cxrdet.errors import ConfigError
from cxrdet.families import load_any_detector
from cxrdet.families.two_stage import TwoStageTask
from cxrdet.models.deformable import deformable_layers
from cxrdet.models.relation import ObjectRelation
from cxrdet.models.retinanet import DecodeConfig
from cxrdet.models.two_stage import build_two_stage, save_two_stage
from cxrdet.train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def params(**two_stage: object):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["detector"] |= {
        "backbone": "test_resnet",
        "weights": "none",
        "image_size": SIZE,
        "p2": False,
        "fpn_channels": 16,
        "families": ["retinanet", "two_stage"],
    }
    raw["detector"]["two_stage"] = {
        "deformable": [4, 5],
        "representation": 32,
        "relation": {"heads": 4, "geometry_dim": 16},
        "anchors": {"base_size": 2.0, "scales": [1.0], "ratios": [1.0]},
        "rpn_batch_size": 32,
        "roi_batch_size": 32,
        "proposals": 50,
        **two_stage,
    }
    return validate_params(raw).detector


def tiny(**two_stage: object):
    torch.manual_seed(0)
    return build_two_stage(params(**two_stage), num_classes=1)


class Squares(Dataset):
    """Bright squares on dark images; every third image has none."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        image = np.full((SIZE, SIZE), 40, np.uint8)
        boxes = np.zeros((0, 4), np.float32)
        if index % 3:
            x, y = 6 + 5 * index % 30, 10 + 3 * index % 28
            image[y : y + 18, x : x + 18] = 220
            boxes = np.array([[x, y, x + 18, y + 18]], np.float32)
        return {
            "image": normalize(image),
            "boxes": torch.from_numpy(boxes),
            "labels": torch.zeros(len(boxes), dtype=torch.int64),
            "image_label": torch.tensor(0),
            "index": index,
        }


def batch(indices: list[int]) -> dict:
    data = Squares(max(indices) + 1)
    return collate_detection([data[i] for i in indices])


def test_images_without_boxes_still_give_a_positive_loss():
    model = tiny().train()
    losses = TwoStageTask(DecodeConfig()).loss(model, batch([0, 3]))  # both without boxes
    assert torch.isfinite(losses) and losses > 0
    both = model(
        batch([0, 1])["image"],
        [
            {"boxes": b, "labels": c}
            for b, c in zip(batch([0, 1])["boxes"], batch([0, 1])["labels"])
        ],
    )
    assert set(both) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def test_detect_keeps_top_k_boxes_inside_the_content_with_0_based_classes():
    model = tiny().eval()
    images = batch([1, 2, 4])["image"]
    with torch.inference_mode():
        found, probabilities = model.detect(
            images, (48, 48), DecodeConfig(score_floor=0.0, nms_iou=0.3, top_k=3)
        )
    assert probabilities is None and len(found) == 3 and any(len(d.boxes) for d in found)
    for d in found:
        assert (
            len(d.boxes) <= 3
            and (d.labels == 0).all()
            and (d.boxes >= 0).all()
            and (d.boxes <= 48).all()
        )


def test_relation_starts_as_identity_and_stays_within_each_image():
    torch.manual_seed(0)
    relation = ObjectRelation(16, 4, 16)
    features, boxes = (
        torch.randn(5, 16),
        torch.tensor(
            [[0, 0, 10, 10], [5, 5, 20, 30], [2, 8, 9, 9], [0, 0, 40, 40], [1, 1, 2, 2]],
            dtype=torch.float32,
        ),
    )
    torch.testing.assert_close(
        relation.over_images(features, boxes, [3, 2]), features
    )  # zero output projection
    torch.nn.init.normal_(relation.attention.out_proj.weight)
    related = relation.over_images(features, boxes, [3, 2])
    assert (related - features).abs().max() > 1e-3
    changed = features.clone()
    changed[3:] += 5.0  # the second image's RoIs
    torch.testing.assert_close(relation.over_images(changed, boxes, [3, 2])[:3], related[:3])


def test_bad_two_stage_params_name_the_key():
    with pytest.raises(
        ConfigError,
        match=(
            r"detector\.two_stage: .*relation\.heads: 5 heads do not divide "
            r"representation \(32\)"
        ),
    ):
        params(relation={"heads": 5, "geometry_dim": 16})
    with pytest.raises(
        ConfigError,
        match=r"detector\.two_stage\.relation\.geometry_dim: Input should be a multiple of 8",
    ):
        params(relation={"heads": 4, "geometry_dim": 12})
    with pytest.raises(
        ConfigError, match=r"detector\.two_stage\.relation\.heads: 3 heads do not divide"
    ):
        ObjectRelation(32, 3, 16, key="detector.two_stage.relation")
    with pytest.raises(
        ConfigError, match=r"detector\.two_stage\.deformable: C6 is not a stage of 'test_resnet'"
    ):
        tiny(deformable=[5, 6])
    with pytest.raises(ConfigError, match=r"detector: .*two_stage\.name must differ"):
        params(name="retinanet")
    with pytest.raises(
        ConfigError, match=r"detector\.families\.1: Input should be 'retinanet' or 'two_stage'"
    ):
        validate_params(
            yaml.safe_load((ROOT / "params.yaml").read_text())
            | {"detector": {"families": ["retinanet", "rfcn"]}}
        )


def test_saved_model_loads_by_its_kind_and_detects_the_same(tmp_path):
    model = tiny().eval()
    save_two_stage(tmp_path / "two_stage.pt", model, {"image_size": SIZE})
    loaded, config = load_any_detector(tmp_path / "two_stage.pt")
    images = batch([1, 2])["image"]
    with torch.inference_mode():
        a, _ = model.detect(images, (SIZE, SIZE), DecodeConfig(score_floor=0.0))
        b, _ = loaded.eval().detect(images, (SIZE, SIZE), DecodeConfig(score_floor=0.0))
    assert config["image_size"] == SIZE and len(deformable_layers(loaded)) == 3
    for x, y in zip(a, b):
        torch.testing.assert_close(x.boxes, y.boxes)


def test_short_training_on_the_loop_lowers_the_loss_and_learns_offsets(tmp_path):
    model = tiny()
    task = TwoStageTask(DecodeConfig())
    optim = OptimParams(epochs=6, batch_size=4, lr=3e-3, schedule={"name": "constant"})
    runtime = TrainParams(device="cpu", progress=False, channels_last=False)
    result = fit(
        model,
        task,
        Squares(12),
        Squares(6),
        optim=optim,
        runtime=runtime,
        device=torch.device("cpu"),
        checkpoint_dir=tmp_path,
        identity={},
        collate_fn=collate_detection,
    )
    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    offsets = [layer.offset.weight.abs().max().item() for layer in deformable_layers(model)]
    assert min(offsets) > 0, offsets
