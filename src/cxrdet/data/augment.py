"""Image augmentations (albumentations), applied with one seeded generator per sample.

`apply_seeded` makes an augmentation a pure function of (image, seed): the training
loader derives the seed from (seed, epoch, sample index) and TTA from (seed, image,
view), so results do not depend on worker processes, batch order or resumption.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integers such as (seed, epoch, index)."""
    return int(np.random.SeedSequence([int(key) & 0xFFFFFFFF for key in keys]).generate_state(1)[0])


def apply_seeded(
    transform: A.BasicTransform | A.BaseCompose, image: np.ndarray, seed: int
) -> np.ndarray:
    # One shared generator pair for the whole pipeline: Compose.set_random_seed would give
    # every child the *same* stream, so invert and flip would always fire together.
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform(image=image)["image"]


def one_random_change(p: float) -> A.OneOf:
    """With probability p, exactly one of: blur, rotation, centre crop-zoom, gamma (1st place)."""
    return A.OneOf(
        [
            A.GaussianBlur(sigma_limit=(0.2, 1.0), blur_limit=0, p=1.0),  # kernel from sigma
            A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
            # Zooming by 1/s about the centre shows the central s = 85-95% of the side at full size.
            A.Affine(scale=(1 / 0.95, 1 / 0.85), keep_ratio=True, p=1.0),
            A.RandomGamma(gamma_limit=(75, 125), p=1.0),
        ],
        p=p,
    )


def classifier_augmentation() -> A.Compose:
    """The 1st place's per-image classifier augmentation: invert p 0.5, horizontal flip
    p 0.5, then with p 0.5 one of blur / rotation +-15 / centre crop-zoom 85-95% / gamma."""
    return A.Compose([A.InvertImg(p=0.5), A.HorizontalFlip(p=0.5), one_random_change(p=0.5)])
