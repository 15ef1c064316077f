"""The detector Task on the shared training loop: validation scores, the frozen encoder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from cxrdet.config import OptimParams, TrainParams
from cxrdet.data.datasets import normalize
from cxrdet.data.detection import collate_detection
from cxrdet.families.task import DetectionTask
from cxrdet.metrics.detection import detection_scores, mean_box_baseline
from cxrdet.models.anchors import anchors_from_base
from cxrdet.models.retinanet import (
    DecodeConfig,
    RetinaNet,
    RetinaNetConfig,
    RetinaNetLoss,
    create_detector_backbone,
    pyramid_levels,
)
from cxrdet.train.loop import fit

SIZE = 128


class Squares(Dataset):
    """Bright squares on dark images, half of them without any."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        image = np.full((SIZE, SIZE), 40, np.uint8)
        boxes = np.zeros((0, 4), np.float32)
        if index % 2:
            x, y = 20 + 8 * index, 30 + 4 * index
            image[y : y + 20, x : x + 20] = 220
            boxes = np.array([[x, y, x + 20, y + 20]], np.float32)
        return {
            "image": normalize(image),
            "boxes": torch.from_numpy(boxes),
            "labels": torch.zeros(len(boxes), dtype=torch.int64),
            "image_label": torch.tensor(index % 2),
            "index": index,
        }


def tiny_model() -> RetinaNet:
    torch.manual_seed(0)
    backbone = create_detector_backbone("test_resnet")
    _, strides = pyramid_levels(backbone.feature_info, False)
    config = RetinaNetConfig(
        "test_resnet",
        1,
        anchors_from_base(1.0, strides, (1.0, 1.5), (1.0,)),
        image_classes=2,
        p2=False,
        fpn_channels=16,
        head_convs=1,
        head_norm=True,
    )
    return RetinaNet(config, backbone)


def test_frozen_encoder_epochs_leave_the_backbone_alone_then_train_it(tmp_path):
    model = tiny_model()
    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    seen = []
    task = DetectionTask(RetinaNetLoss(model.box_coder), DecodeConfig(), freeze_encoder_epochs=1)

    def record(epoch: int, metrics: dict) -> None:
        seen.append({k: v.clone() for k, v in model.backbone.state_dict().items()})

    optim = OptimParams(epochs=2, batch_size=2, lr=1e-3, schedule={"name": "constant"})
    runtime = TrainParams(device="cpu", progress=False, channels_last=False)
    fit(
        model,
        task,
        Squares(4),
        Squares(2),
        optim=optim,
        runtime=runtime,
        device=torch.device("cpu"),
        checkpoint_dir=tmp_path,
        identity={},
        on_epoch_end=record,
        collate_fn=collate_detection,
    )
    after_frozen, after_training = seen
    assert all(
        torch.equal(start[k], after_frozen[k]) for k in start
    )  # weights and batch-norm statistics
    assert any(not torch.equal(start[k], after_training[k]) for k in start)


def test_validation_scores_count_every_image():
    truth = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "x": [10.0, 50.0],
            "y": [10.0, 50.0],
            "w": [20.0, 20.0],
            "h": [20.0, 20.0],
            "class_id": 0,
        }
    )
    exact = truth.assign(score=0.9)
    assert detection_scores(truth, exact) == {"rsna": 1.0, "rsna_threshold": 0.05, "map": 1.0}
    # A confident false positive on an image without truth costs that image (score 0).
    extra = pd.concat(
        [
            exact,
            pd.DataFrame(
                {
                    "image_id": ["c"],
                    "x": [5.0],
                    "y": [5.0],
                    "w": [9.0],
                    "h": [9.0],
                    "score": [0.3],
                    "class_id": [0],
                }
            ),
        ]
    )
    scores = detection_scores(truth, extra)
    assert scores["rsna"] == 1.0 and scores["rsna_threshold"] == 0.35


def test_mean_box_baseline_is_one_box_per_image_scaled_to_its_size():
    images = pd.DataFrame({"image_id": ["a", "b"], "width": [100, 200], "height": [100, 100]})
    boxes = pd.DataFrame(
        {
            "image_id": ["a", "a"],
            "x": [10.0, 30.0],
            "y": [20.0, 20.0],
            "w": [10.0, 30.0],
            "h": [10.0, 10.0],
        }
    )
    baseline = mean_box_baseline(boxes, images, images)
    assert baseline[["x", "y", "w", "h"]].to_numpy().tolist() == [
        [20.0, 20.0, 20.0, 10.0],
        [40.0, 20.0, 40.0, 10.0],
    ]
    assert (baseline["score"] == 1.0).all()


@pytest.mark.parametrize("count", [3])
def test_task_loss_and_predict_on_a_batch(count):
    model = tiny_model()
    task = DetectionTask(RetinaNetLoss(model.box_coder), DecodeConfig(score_floor=0.0, top_k=5))
    batch = collate_detection([Squares(count)[i] for i in range(count)])
    assert torch.isfinite(task.loss(model, batch))
    model.eval()
    with torch.no_grad():
        out = task.predict(model, batch)
    assert len(out["boxes"]) == count and all(len(b) <= 5 for b in out["boxes"])
    scores = task.score([out])
    assert set(scores) == {"rsna", "rsna_threshold", "map"}
