"""The detection Task of `cxrdet.train.loop.fit`: a detector's loss, its predictions on
validation batches and their scores (cxrdet.metrics.detection, in input pixels). Every family
predicts through its model's `detect(images, image_size, decode_config)`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrdet.metrics.detection import detection_scores
from cxrdet.metrics.iou import xyxy_frame
from cxrdet.models.retinanet import DecodeConfig, RetinaNetLoss
from cxrdet.runtime.distributed import unwrap


class DetectionTask:
    """Loss, prediction and validation scores of a RetinaNet for `fit` (prediction and scores
    serve every family: a family's model has `detect`; a family's Task overrides `loss`).

    `start_epoch` freezes the encoder during the first `freeze_encoder_epochs` epochs."""

    def __init__(
        self,
        criterion: RetinaNetLoss | None,
        decode_config: DecodeConfig,
        *,
        monitor: str = "rsna",
        freeze_encoder_epochs: int = 0,
        global_head: bool = True,
    ) -> None:
        self.criterion = criterion
        self.decode_config = decode_config
        self.monitor = monitor
        self.freeze_encoder_epochs = freeze_encoder_epochs
        self.global_head = global_head

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        unwrap(model).freeze_encoder(epoch < self.freeze_encoder_epochs)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        device = batch["image"].device
        outputs = model(batch["image"])
        total, _ = self.criterion(
            outputs,
            [b.to(device) for b in batch["boxes"]],
            [b.to(device) for b in batch["labels"]],
            batch["image_label"] if self.global_head else None,
        )
        return total

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        images = batch["image"]
        detections, _ = unwrap(model).detect(images, tuple(images.shape[-2:]), self.decode_config)
        return {
            "index": batch["index"].cpu(),
            "boxes": [d.boxes.cpu().numpy() for d in detections],
            "scores": [d.scores.cpu().numpy() for d in detections],
            "labels": [d.labels.cpu().numpy() for d in detections],
            "truth": [b.numpy() for b in batch["boxes"]],
            "truth_labels": [b.numpy() for b in batch["labels"]],
        }

    def score(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        index = np.concatenate([o["index"].numpy() for o in outputs])

        def frame(boxes_key: str, labels_key: str, scores_key: str | None) -> pd.DataFrame:
            boxes = [b for o in outputs for b in o[boxes_key]]
            owners = np.repeat(index, [len(b) for b in boxes])
            extra = {
                "class_id": np.concatenate([b for o in outputs for b in o[labels_key]]).astype(
                    np.int64
                )
            }
            if scores_key:
                extra["score"] = np.concatenate([s for o in outputs for s in o[scores_key]]).astype(
                    np.float64
                )
            return xyxy_frame(owners, np.concatenate(boxes) if boxes else np.zeros((0, 4)), **extra)

        return detection_scores(
            frame("truth", "truth_labels", None), frame("boxes", "labels", "scores")
        )
