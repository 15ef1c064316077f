"""The RetinaNet family (cxrdet.models.retinanet): params' detector.* top-level knobs, trained
with the focal loss (and the global head's image-class loss) of `DetectionTask`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cxrdet.config import DetectorParams
from cxrdet.families import DetectorFamily, FamilySettings
from cxrdet.families.task import DetectionTask
from cxrdet.models.anchors import warn_unmatchable
from cxrdet.models.retinanet import (
    DETECTOR_KIND,
    RetinaNet,
    RetinaNetLoss,
    build_retinanet,
    decode_config,
    load_detector,
    loss_config,
    save_detector,
)

KEY = "retinanet"
MODEL_FILE = "model.pt"


def settings(params: DetectorParams) -> FamilySettings:
    return FamilySettings(KEY, params.name, params.optim, decode_config(params), False, MODEL_FILE)


def task(
    model: RetinaNet,
    params: DetectorParams,
    settings: FamilySettings,
    global_head: bool,
    box_sizes: Callable[[], np.ndarray],
) -> DetectionTask:
    warn_unmatchable(box_sizes(), model.config.anchors, params.loss.fg_iou)
    return DetectionTask(
        RetinaNetLoss(model.box_coder, loss_config(params)),
        settings.decode,
        monitor=params.monitor,
        freeze_encoder_epochs=params.freeze_encoder_epochs,
        global_head=global_head,
    )


def identity(params: DetectorParams, settings: FamilySettings) -> dict[str, Any]:
    return params.model_dump(
        exclude={"optim", "decode", "tta", "folds", "name", "families", "two_stage"}
    )


FAMILY = DetectorFamily(
    key=KEY,
    kind=DETECTOR_KIND,
    model_file=MODEL_FILE,
    model_class=RetinaNet,
    global_head=True,
    settings=settings,
    build=build_retinanet,
    task=task,
    identity=identity,
    save=save_detector,
    load=load_detector,
)
