"""Detector test-time augmentation: {original, hflip} x scales views, boxes mapped back.

A view flips the input image, resizes it by `scale` and pads it (bottom and right, so
box coordinates do not move) to a multiple of the backbone's last stride. Its boxes
are mapped back to the un-augmented input frame, then to original pixels, so every
view's predictions of an image can be fused without running the network again
(1st place: {original, hflip} x {0.8, 1.0, 1.2} = 6 views).

Per-view prediction tables (parquet), the contract between every detector family and
the ensemble stage:

boxes: one row per kept box of one image in one view
    image_id  str     the prepared image id
    fold      int     the fold whose model predicted it (the fold it was validated on);
                      FINAL_FOLD (-1, the split's holdout fold) for the final model of stage
                      train_detector_final, trained on every other fold: no fold was left out
                      for it, only the holdout is unseen
    model     str     the detector's name (params `detector.name`), unique per family/variant
    view      str     "original", "hflip", "scale0.8", "hflip_scale1.2", ...
    x, y      float   top-left corner, ORIGINAL image pixels
    w, h      float   width, height, original image pixels
    score     float   box confidence in (score floor, 1]; at most top_k boxes per image and view
    class_id  int     box class (index into the prepared dataset's class_names)
images: one row per image and view, images without boxes included
    image_id, fold, model, view   as above
    p_<name>  float   the global head's probability of each image class, in its class order
    opacity   float   the summed probability of the image classes that have boxes
    (no p_ / opacity columns when the detector has no global head)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from cxrdet.config import TrainParams
from cxrdet.data.datasets import CachedImages, normalize
from cxrdet.data.detection import boxes_to_original
from cxrdet.ensemble.tables import KEY_COLUMNS
from cxrdet.models.retinanet import DecodeConfig
from cxrdet.runtime.distributed import DistContext
from cxrdet.runtime.inference import predict_dataset

ORIGINAL = "original"
FINAL_FOLD = -1  # the final model's `fold`: the split's HOLDOUT, the only images it did not see
BOX_COLUMNS = [*KEY_COLUMNS, "x", "y", "w", "h", "score", "class_id"]


@dataclass(frozen=True)
class DetectionView:
    hflip: bool = False
    scale: float = 1.0

    @property
    def name(self) -> str:
        parts = (["hflip"] if self.hflip else []) + (
            [f"scale{self.scale:g}"] if self.scale != 1.0 else []
        )
        return "_".join(parts) or ORIGINAL


def detection_views(hflip: bool, scales: Sequence[float]) -> list[DetectionView]:
    """Every scale, un-flipped and (when `hflip`) flipped; the original view first."""
    ordered = sorted(set(scales), key=lambda s: (s != 1.0, s))
    return [
        DetectionView(flip, scale)
        for flip in ((False, True) if hflip else (False,))
        for scale in ordered
    ]


def view_image(
    image: np.ndarray, view: DetectionView, multiple: int
) -> tuple[np.ndarray, float, int]:
    """(padded view image, factor = view side / input side, view side before padding)."""
    size = image.shape[0]
    if view.hflip:
        image = np.ascontiguousarray(image[:, ::-1])
    side = max(1, round(size * view.scale))
    if side != size:
        image = cv2.resize(
            image, (side, side), interpolation=cv2.INTER_AREA if side < size else cv2.INTER_LINEAR
        )
    padded = -(-side // multiple) * multiple
    if padded != side:
        image = np.pad(image, ((0, padded - side), (0, padded - side)))
    return image, side / size, side


def boxes_from_view(boxes: np.ndarray, view: DetectionView, factor: float, size: int) -> np.ndarray:
    """(n, 4) xyxy boxes of a view -> the input frame (side `size`)."""
    mapped = np.clip(boxes / factor, 0.0, size)
    if view.hflip:
        mapped = np.stack(
            [size - mapped[:, 2], mapped[:, 1], size - mapped[:, 0], mapped[:, 3]], axis=1
        )
    return mapped


class ViewDataset(Dataset):
    """Items {"image": (1, side, side) normalised view, "index": int} of one view."""

    def __init__(self, images: CachedImages, size: int, view: DetectionView, multiple: int) -> None:
        self.images = images
        self.size = size
        self.view = view
        self.multiple = multiple

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, _, _ = view_image(self.images.read(index, self.size), self.view, self.multiple)
        return {"image": normalize(image), "index": index}


def _predict_view(
    model: nn.Module,
    batch: dict[str, Any],
    view: DetectionView,
    size: int,
    decode_config: DecodeConfig,
) -> dict[str, Any]:
    side = max(1, round(size * view.scale))
    detections, probs = model.detect(
        batch["image"], (side, side), decode_config
    )  # content, not padding
    return {
        "index": batch["index"].cpu(),
        "boxes": [
            boxes_from_view(d.boxes.cpu().numpy(), view, side / size, size) for d in detections
        ],
        "scores": [d.scores.cpu().numpy() for d in detections],
        "labels": [d.labels.cpu().numpy() for d in detections],
        "probs": None if probs is None else probs.cpu().numpy(),
    }


@dataclass
class ViewPredictions:
    """One view's predictions, images in input order; boxes xyxy in the input frame."""

    view: DetectionView
    boxes: list[np.ndarray]
    scores: list[np.ndarray]
    labels: list[np.ndarray]
    probs: np.ndarray | None  # (images, image classes)


def predict_views(
    model: nn.Module,
    images: CachedImages,
    *,
    size: int,
    views: Sequence[DetectionView],
    decode_config: DecodeConfig,
    batch_size: int,
    device: torch.device,
    runtime: TrainParams,
    context: DistContext | None = None,
) -> list[ViewPredictions]:
    """Every view of every image through `model` (a detector of any family), sharded over DDP
    ranks."""
    if len(images) == 0:
        return [ViewPredictions(view, [], [], [], None) for view in views]
    results = []
    for view in views:
        outputs = predict_dataset(
            model,
            ViewDataset(images, size, view, model.pad_multiple),
            partial(_predict_view, view=view, size=size, decode_config=decode_config),
            batch_size=batch_size,
            device=device,
            runtime=runtime,
            context=context or DistContext(),
            desc=f"TTA {view.name}",
        )
        results.append(_in_image_order(view, outputs))
    return results


def _in_image_order(view: DetectionView, outputs: list[dict[str, Any]]) -> ViewPredictions:
    """Batches (any order, DDP ranks one after another) -> the view's predictions by image index."""
    order = np.argsort(np.concatenate([o["index"].numpy() for o in outputs]), kind="stable")
    joined = {
        key: [item for o in outputs for item in o[key]] for key in ("boxes", "scores", "labels")
    }
    boxes, scores, labels = (
        [joined[key][i] for i in order] for key in ("boxes", "scores", "labels")
    )
    probs = (
        None
        if outputs[0]["probs"] is None
        else np.concatenate([o["probs"] for o in outputs])[order]
    )
    return ViewPredictions(view, boxes, scores, labels, probs)


def prediction_tables(
    predictions: Sequence[ViewPredictions],
    image_ids: Sequence[str],
    images: pd.DataFrame,
    size: int,
    *,
    fold: int,
    model: str,
    image_classes: Sequence[str] = (),
    positive: Sequence[int] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(boxes, images) tables of the module docstring's contract. `images`: the prepared
    images table (original sizes); `positive`: image classes that make up `opacity`."""
    box_parts, image_parts = [], []
    for view in predictions:
        counts = [len(b) for b in view.boxes]
        owners = np.repeat(np.asarray(image_ids, dtype=object), counts)
        xyxy = np.concatenate(view.boxes) if sum(counts) else np.zeros((0, 4))
        boxes = boxes_to_original(owners, xyxy, images, size)
        boxes.insert(1, "fold", fold)
        boxes.insert(2, "model", model)
        boxes.insert(3, "view", view.view.name)
        boxes["score"] = (
            np.concatenate(view.scores).astype(np.float64) if sum(counts) else np.zeros(0)
        )
        boxes["class_id"] = (
            np.concatenate(view.labels).astype(np.int64) if sum(counts) else np.zeros(0, np.int64)
        )
        box_parts.append(boxes)
        table = pd.DataFrame(
            {"image_id": list(image_ids), "fold": fold, "model": model, "view": view.view.name}
        )
        if view.probs is not None:
            for k, name in enumerate(image_classes):
                table[f"p_{name}"] = view.probs[:, k].astype(np.float64)
            table["opacity"] = view.probs[:, list(positive)].sum(axis=1).astype(np.float64)
        image_parts.append(table)
    return pd.concat(box_parts, ignore_index=True)[BOX_COLUMNS], pd.concat(
        image_parts, ignore_index=True
    )
