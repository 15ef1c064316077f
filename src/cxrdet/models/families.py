"""The detector families, side by side: which file each writes per fold, how a saved one is
loaded, and one way to get boxes from either (what TTA prediction and validation call).

Both families' predictions share one table contract (cxrdet.infer.detector_tta) and are
told apart by their `model` column, so the ensemble fuses them like any two members.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cxrdet.errors import CxrdetError
from cxrdet.models.files import model_file_kind
from cxrdet.models.retinanet import DETECTOR_KIND, DecodeConfig, Detections, decode, image_probabilities, load_detector
from cxrdet.models.two_stage import TWO_STAGE_KIND, TwoStageDetector, load_two_stage

RETINANET, TWO_STAGE = "retinanet", "two_stage"  # params' detector.families
MODEL_FILES = {RETINANET: "model.pt", TWO_STAGE: "two_stage.pt"}  # in models/detector/fold<k>/
LOADERS = {DETECTOR_KIND: load_detector, TWO_STAGE_KIND: load_two_stage}


def load_any_detector(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model, config) of a model file of either family."""
    kind = model_file_kind(path)
    if kind not in LOADERS:
        raise CxrdetError(f"{path}: a {kind!r} file, not a detector ({sorted(LOADERS)})")
    return LOADERS[kind](path)


def detect(
    model: nn.Module, images: Tensor, image_size: tuple[int, int], config: DecodeConfig
) -> tuple[list[Detections], Tensor | None]:
    """(per-image detections, global-head probabilities or None) of normalised `images`;
    `image_size` is their content (boxes are clipped to it; the rest is padding)."""
    if isinstance(model, TwoStageDetector):  # its RoI heads decode; it has no global head
        return model.detect(images, image_size, config), None
    outputs = model(images)
    return decode(outputs, model.box_coder, image_size, config), image_probabilities(outputs)
