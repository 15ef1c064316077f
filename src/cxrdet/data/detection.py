"""Detection dataset over a prepared folder, and the one place boxes change coordinates.

Boxes live in original pixels on disk (x, y, w, h, top-left); the network sees square
inputs of `size` pixels (the cache resized), so a box is scaled by size / width and
size / height on the way in (`boxes_to_input`) and back on the way out
(`boxes_to_original`). Images go through the classifiers' `normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrdet.data.augment import A
from cxrdet.data.box_augment import apply_seeded_boxes
from cxrdet.data.datasets import CachedImages, EpochSeededDataset, normalize

MIN_BOX_SIDE = 1.0  # input pixels: thinner boxes (after augmentation) are dropped


def input_scale(images: pd.DataFrame, size: int) -> pd.DataFrame:
    """sx, sy (input pixels per original pixel) indexed by image_id."""
    indexed = images.set_index("image_id")
    return pd.DataFrame({"sx": size / indexed["width"], "sy": size / indexed["height"]})


def boxes_to_input(boxes: pd.DataFrame, images: pd.DataFrame, size: int) -> pd.DataFrame:
    """image_id, x0, y0, x1, y1 (input pixels), class_id."""
    scale = input_scale(images, size).loc[boxes["image_id"]].to_numpy()
    sx, sy = scale[:, 0], scale[:, 1]
    x, y = boxes["x"].to_numpy(float) * sx, boxes["y"].to_numpy(float) * sy
    return pd.DataFrame(
        {
            "image_id": boxes["image_id"].to_numpy(),
            "x0": x,
            "y0": y,
            "x1": x + boxes["w"].to_numpy(float) * sx,
            "y1": y + boxes["h"].to_numpy(float) * sy,
            "class_id": boxes["class_id"].to_numpy(np.int64),
        }
    )


def boxes_to_original(
    image_ids: Sequence[str], xyxy: np.ndarray, images: pd.DataFrame, size: int
) -> pd.DataFrame:
    """image_id, x, y, w, h (original pixels) from (n, 4) xyxy input-pixel boxes."""
    scale = input_scale(images, size).loc[list(image_ids)].to_numpy()
    sx, sy = scale[:, 0], scale[:, 1]
    return pd.DataFrame(
        {
            "image_id": list(image_ids),
            "x": xyxy[:, 0] / sx,
            "y": xyxy[:, 1] / sy,
            "w": (xyxy[:, 2] - xyxy[:, 0]) / sx,
            "h": (xyxy[:, 3] - xyxy[:, 1]) / sy,
        }
    )


class DetectionDataset(EpochSeededDataset):
    """Items {"image": (1, size, size) float, "boxes": (n, 4) float xyxy input pixels,
    "labels": (n,) int64 box classes, "image_label": int64, "index": int}.

    `boxes` is the prepared boxes table (original pixels); `image_labels` one class index
    per image (the global head's target).
    """

    def __init__(
        self,
        images: CachedImages,
        table: pd.DataFrame,
        boxes: pd.DataFrame,
        image_labels: np.ndarray,
        size: int,
        augment: A.Compose | None = None,
        seed: int = 0,
    ) -> None:
        if len(image_labels) != len(images):
            raise ValueError(f"{len(image_labels)} image labels for {len(images)} images")
        scaled = boxes_to_input(boxes[boxes["image_id"].isin(images.image_ids)], table, size)
        grouped = dict(tuple(scaled.groupby("image_id")))
        empty = scaled.iloc[:0]
        per_image = [grouped.get(image_id, empty) for image_id in images.image_ids]
        self.boxes = [rows[["x0", "y0", "x1", "y1"]].to_numpy(np.float32) for rows in per_image]
        self.labels = [rows["class_id"].to_numpy(np.int64) for rows in per_image]
        super().__init__(images, size, augment, seed)
        self.image_labels = torch.tensor(np.asarray(image_labels), dtype=torch.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, boxes, labels = (
            self.images.read(index, self.size),
            self.boxes[index],
            self.labels[index],
        )
        if self.augment is not None:
            image, boxes, labels = apply_seeded_boxes(
                self.augment, image, boxes, labels, self.sample_seed(index)
            )
            wide = ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX_SIDE).all(axis=1)
            boxes, labels = boxes[wide], labels[wide]
        return {
            "image": normalize(image),
            "boxes": torch.tensor(boxes),
            "labels": torch.tensor(labels),
            "image_label": self.image_labels[index],
            "index": index,
        }


def collate_detection(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked (one size per batch); boxes and labels as per-image lists."""
    return {
        "image": torch.stack([item["image"] for item in items]),
        "boxes": [item["boxes"] for item in items],
        "labels": [item["labels"] for item in items],
        "image_label": torch.stack([item["image_label"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
    }
