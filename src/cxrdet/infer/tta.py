"""Classifier test-time augmentation (1st place): {original, inverted, flipped} x
(1 + N random augmentations) views per image, each predicted separately.

Every view's probability is kept, so the tuning stage can choose how many views to
average without running the network again. A random view is seeded by (seed, the image's
pixels, view): the same image always gets the same views, in any batch, on any rank, under
any image id (OOF predictions, evaluate, predict and serving all see the same views).

`view_table` is the classifiers' prediction table, the contract between them and the
ensemble stage: one row per (image, view) with image_id, fold, model, view, opacity
(= P(opacity)) and probs (every class, in the model's class order).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from cxrdet.config import TrainParams
from cxrdet.data.augment import A, apply_seeded, derive_seed, one_random_change
from cxrdet.data.datasets import CachedImages, normalize
from cxrdet.runtime.distributed import DistContext
from cxrdet.runtime.inference import predict_dataset

BASES = ("original", "inverted", "flipped")


@dataclass(frozen=True)
class TtaView:
    base: str  # one of BASES
    aug: int  # 0: the base view itself; k >= 1: the k-th random augmentation of it

    @property
    def name(self) -> str:
        return self.base if self.aug == 0 else f"{self.base}+aug{self.aug}"


def tta_views(augmentations: int) -> list[TtaView]:
    """3 x (1 + augmentations) views; 4 augmentations give the 1st place's 15."""
    return [TtaView(base, aug) for base in BASES for aug in range(augmentations + 1)]


class ViewTransforms:
    """The transforms of the views: the training pipeline's own invert, flip and random change."""

    def __init__(self) -> None:
        self.base: dict[str, A.BasicTransform | None] = {
            "original": None,
            "inverted": A.InvertImg(p=1.0),
            "flipped": A.HorizontalFlip(p=1.0),
        }
        self.random_change = one_random_change(p=1.0)  # every augmented view is changed

    def __call__(self, image: np.ndarray, view: TtaView, seed: int) -> np.ndarray:
        base = self.base[view.base]
        if base is not None:
            image = base(image=image)["image"]
        if view.aug:
            image = apply_seeded(self.random_change, image, seed)
        return image


def pixel_key(image: np.ndarray) -> int:
    """A 32-bit digest of an image's pixels and shape: what its random views are seeded by."""
    return zlib.crc32(np.ascontiguousarray(image).tobytes(), zlib.crc32(repr(image.shape).encode()))


def view_seed(seed: int, key: int, view_index: int) -> int:
    """The random view's seed from the image's pixel_key, never its id (same image, same answer)."""
    return derive_seed(seed, key, view_index)


class TtaDataset(Dataset):
    """Items {"image": (views, 1, size, size), "index": int}: all views of one image."""

    def __init__(self, images: CachedImages, size: int, views: list[TtaView], seed: int) -> None:
        self.images = images
        self.size = size
        self.views = views
        self.seed = seed
        self.transforms = ViewTransforms()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images.read(index, self.size)
        key = pixel_key(image)
        stacked = [
            normalize(self.transforms(image, view, view_seed(self.seed, key, number)))
            for number, view in enumerate(self.views)
        ]
        return {"image": torch.stack(stacked), "index": index}


def _predict_views(
    model: nn.Module, batch: dict[str, Any], channels_last: bool
) -> dict[str, torch.Tensor]:
    images = batch["image"]
    count, views = images.shape[:2]
    flat = images.flatten(0, 1)
    if channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last)
    probs = model(flat).float().softmax(dim=1)
    return {"index": batch["index"].cpu(), "probs": probs.view(count, views, -1).cpu()}


def predict_tta(
    model: nn.Module,
    images: CachedImages,
    *,
    size: int,
    views: list[TtaView],
    seed: int,
    batch_size: int,
    device: torch.device,
    runtime: TrainParams,
    context: DistContext = DistContext(),
) -> np.ndarray:
    """Softmax probabilities (images, views, classes) of a classifier, images in order."""
    outputs = predict_dataset(
        model,
        TtaDataset(images, size, views, seed),
        partial(_predict_views, channels_last=runtime.channels_last),
        batch_size=batch_size,
        device=device,
        runtime=runtime,
        context=context,
        desc="TTA",
    )
    index = torch.cat([batch["index"] for batch in outputs]).numpy()
    probs = torch.cat([batch["probs"] for batch in outputs]).numpy()
    return probs[np.argsort(index, kind="stable")]


def view_table(
    probs: np.ndarray, image_ids: Sequence[str], config: dict[str, Any], views: Sequence[str]
) -> pd.DataFrame:
    """The prediction table of TTA probabilities (images, views, classes) of the classifier
    described by `config` (see train_fold_classifier): one row per (image, view)."""
    count = len(image_ids)
    return pd.DataFrame(
        {
            "image_id": np.repeat(np.asarray(image_ids, dtype=object), len(views)),
            "fold": config["fold"],
            "model": config["variant"],
            "view": list(views) * count,
            "opacity": probs[:, :, config["positive"]].sum(axis=2).reshape(-1),
            "probs": list(probs.reshape(count * len(views), -1)),
        }
    )
