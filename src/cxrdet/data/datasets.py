"""Torch datasets over a prepared folder, and the one input rule every model shares.

`normalize` is the only place pixels become model input, for training, validation, TTA
and serving alike; `check_normalized` runs on the first batch of every loader, because
"the same output for every image" usually means a different scaling somewhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrdet.data.augment import A, apply_seeded, derive_seed
from cxrdet.data.cache import read_cached, resize_square
from cxrdet.errors import CxrdetError

# timm builds a one-channel stem from RGB ImageNet weights by summing the filters over the
# channels, so one-channel input keeps the ImageNet scale with the mean of its RGB mean/std.
PIXEL_MEAN = 0.449
PIXEL_STD = 0.226
INPUT_RANGE = ((0.0 - PIXEL_MEAN) / PIXEL_STD, (1.0 - PIXEL_MEAN) / PIXEL_STD)


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> float32 (1, H, W): pixel / 255, standardised."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)
    return pixels.sub_(PIXEL_MEAN).div_(PIXEL_STD).unsqueeze(0)


def check_normalized(images: torch.Tensor) -> None:
    """Fail fast when a batch did not go through `normalize` or holds blank images."""
    low, high = INPUT_RANGE
    found_low, found_high = float(images.min()), float(images.max())
    if images.dtype != torch.float32 or found_low < low - 1e-3 or found_high > high + 1e-3:
        raise CxrdetError(
            f"model input batch ({images.dtype}, values {found_low:.3f}..{found_high:.3f}) is not "
            f"in the normalised range {low:.3f}..{high:.3f}: images must pass through "
            "cxrdet.data.datasets.normalize"
        )
    if found_low == found_high:
        raise CxrdetError(
            f"every pixel of the input batch is {found_low:.3f}: blank or badly converted images"
        )


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset folder (see cxrdet.data.prepare)."""

    root: Path
    images: pd.DataFrame
    boxes: pd.DataFrame
    targets: pd.DataFrame
    info: dict


def read_prepared(root: Path) -> Prepared:
    root = Path(root)
    files = ["images.parquet", "boxes.parquet", "targets.parquet", "dataset.json"]
    missing = [name for name in files if not (root / name).exists()]
    if missing:
        raise CxrdetError(
            f"{root}: prepared dataset incomplete (missing {missing}); run its `prepare` stage"
        )
    return Prepared(
        root=root,
        images=pd.read_parquet(root / "images.parquet"),
        boxes=pd.read_parquet(root / "boxes.parquet"),
        targets=pd.read_parquet(root / "targets.parquet"),
        info=json.loads((root / "dataset.json").read_text()),
    )


class CachedImages:
    """The cached uint8 images of `image_ids`, in that order."""

    def __init__(self, prepared: Prepared, image_ids: Sequence[str]) -> None:
        paths = prepared.images.set_index("image_id")["cache_path"]
        unknown = [image_id for image_id in image_ids if image_id not in paths.index]
        if unknown:
            raise CxrdetError(
                f"{prepared.root}: {len(unknown)} image ids not prepared, e.g. {unknown[:3]}"
            )
        self.image_ids = list(image_ids)
        self.paths = [prepared.root / path for path in paths.loc[self.image_ids]]

    def __len__(self) -> int:
        return len(self.image_ids)

    def read(self, index: int, size: int) -> np.ndarray:
        image = read_cached(self.paths[index])
        return image if image.shape == (size, size) else resize_square(image, size)


class EpochSeededDataset(Dataset):
    """Cached images read at `size`, augmented (when `augment` is given) with a seed of
    (seed, epoch, index), so an epoch's samples do not depend on workers or resumption:
    the training loop calls `set_epoch`."""

    def __init__(
        self,
        images: CachedImages,
        size: int,
        augment: A.BasicTransform | A.BaseCompose | None,
        seed: int,
    ) -> None:
        self.images = images
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def sample_seed(self, index: int) -> int:
        return derive_seed(self.seed, self.epoch, index)


class ClassificationDataset(EpochSeededDataset):
    """Items {"image": (1, size, size) float, "target": tensor, "index": int}.

    `targets[i]` is a class index (single-label) or a 0/1 vector (multi-label).
    """

    def __init__(
        self,
        images: CachedImages,
        targets: np.ndarray,
        size: int,
        augment: A.BasicTransform | A.BaseCompose | None = None,
        seed: int = 0,
    ) -> None:
        if len(targets) != len(images):
            raise ValueError(f"{len(targets)} targets for {len(images)} images")
        super().__init__(images, size, augment, seed)
        self.targets = torch.tensor(np.asarray(targets))

    def __getitem__(self, index: int) -> dict:
        image = self.images.read(index, self.size)
        if self.augment is not None:
            image = apply_seeded(self.augment, image, self.sample_seed(index))
        return {"image": normalize(image), "target": self.targets[index], "index": index}


def truth_boxes(prepared: Prepared, image_ids: Sequence[str]) -> pd.DataFrame:
    """The prepared boxes of `image_ids` (original pixels)."""
    return prepared.boxes[prepared.boxes["image_id"].isin(image_ids)].reset_index(drop=True)
