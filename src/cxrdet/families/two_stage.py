"""The two-stage family (cxrdet.models.two_stage): params' detector.two_stage knobs on the
shared backbone, trained with torchvision's RPN and box-head losses; no global head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrdet.config import DetectorParams
from cxrdet.families import DetectorFamily, FamilySettings
from cxrdet.families.task import DetectionTask
from cxrdet.models.retinanet import DecodeConfig
from cxrdet.models.two_stage import (
    TWO_STAGE_KIND,
    TwoStageDetector,
    build_two_stage,
    load_two_stage,
    save_two_stage,
)

KEY = "two_stage"
MODEL_FILE = "two_stage.pt"


class TwoStageTask(DetectionTask):
    """The two-stage detector's loss: the sum of torchvision's RPN and box-head losses, which
    its forward pass computes from the targets (images without boxes: background only)."""

    def __init__(
        self, decode_config: DecodeConfig, *, monitor: str = "rsna", freeze_encoder_epochs: int = 0
    ) -> None:
        super().__init__(
            None,
            decode_config,
            monitor=monitor,
            freeze_encoder_epochs=freeze_encoder_epochs,
            global_head=False,
        )

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        device = batch["image"].device
        targets = [
            {"boxes": b.to(device), "labels": c.to(device)}
            for b, c in zip(batch["boxes"], batch["labels"])
        ]
        return sum(model(batch["image"], targets).values())


def settings(params: DetectorParams) -> FamilySettings:
    two_stage = params.two_stage
    return FamilySettings(
        KEY,
        two_stage.name,
        two_stage.optim,
        DecodeConfig(**two_stage.decode.model_dump()),
        two_stage.positives_only,
        MODEL_FILE,
    )


def build(
    params: DetectorParams,
    num_classes: int,
    image_classes: int,
    tuned_anchors: dict[str, Any] | None,
    tuned_key: str,
    weights: dict[str, Any] | None,
) -> TwoStageDetector:
    """No global head, and the tuned anchors are the RetinaNet's: the RPN has its own."""
    return build_two_stage(params, num_classes, weights)


def task(
    model: TwoStageDetector,
    params: DetectorParams,
    settings: FamilySettings,
    global_head: bool,
    box_sizes: Callable[[], np.ndarray],
) -> TwoStageTask:
    # No anchor warning: the RPN matches every box to its best anchor and the box head regresses
    # again.
    return TwoStageTask(
        settings.decode, monitor=params.monitor, freeze_encoder_epochs=params.freeze_encoder_epochs
    )


def identity(params: DetectorParams, settings: FamilySettings) -> dict[str, Any]:
    shared = {"backbone", "weights", "image_size", "augment", "freeze_encoder_epochs", "monitor"}
    return {"shared": params.model_dump(include=shared), "positives_only": settings.positives_only}


FAMILY = DetectorFamily(
    key=KEY,
    kind=TWO_STAGE_KIND,
    model_file=MODEL_FILE,
    model_class=TwoStageDetector,
    global_head=False,
    settings=settings,
    build=build,
    task=task,
    identity=identity,
    save=save_two_stage,
    load=load_two_stage,
)
