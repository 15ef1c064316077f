"""Detector augmentation (albumentations): the RSNA 2nd place's affine, flip, blur, noise, gamma.

Rotating or shearing a box's 4 corners inflates it (the lesion inside is roughly an
ellipse, not a rectangle filling the box). The 2nd place took 8 points instead, at 1/3
and 2/3 of each edge, transformed those and boxed them: `EightPointAffine` is
albumentations' Affine with that box rule, usable in any albumentations pipeline;
`GaussianAffine` samples it as they did (scale 2^N(0, s), rotation N(0, r), shear N(0, h)
degrees, shift uniform).

Boxes are xyxy pixels ("pascal_voc") with class ids in `labels`; `apply_seeded_boxes`
makes a pipeline a pure function of (image, boxes, seed), as for the classifiers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric
from albumentations.core.bbox_utils import denormalize_bboxes, normalize_bboxes

from cxrdet.data.augment import A

# A box keeps its label while this much of it stays in the image (it is clipped to the image).
MIN_VISIBILITY = 0.3
EDGE_POINTS = np.array([1 / 3, 2 / 3])


def eight_point_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(n, 4) xyxy boxes through a 2x3 or 3x3 affine matrix: the box of the transformed
    points at 1/3 and 2/3 of each edge."""
    x0, y0, x1, y1 = (boxes[:, k : k + 1] for k in range(4))
    along_x = x0 + EDGE_POINTS * (x1 - x0)  # (n, 2)
    along_y = y0 + EDGE_POINTS * (y1 - y0)
    xs = np.concatenate(
        [along_x, along_x, np.repeat(x0, 2, 1), np.repeat(x1, 2, 1)], axis=1
    )  # (n, 8)
    ys = np.concatenate([np.repeat(y0, 2, 1), np.repeat(y1, 2, 1), along_y, along_y], axis=1)
    m = np.asarray(matrix, dtype=np.float64)[:2]
    tx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    ty = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return np.stack([tx.min(1), ty.min(1), tx.max(1), ty.max(1)], axis=1)


class EightPointAffine(A.Affine):
    """albumentations' Affine (same arguments) whose boxes follow the 8-point rule.

    Reflective borders would mirror lesions without boxes: use a constant border."""

    def apply_to_bboxes(
        self,
        bboxes: np.ndarray,
        bbox_matrix: np.ndarray,
        output_shape: tuple[int, int],
        **params: Any,
    ) -> np.ndarray:
        if len(bboxes) == 0 or fgeometric.is_identity_matrix(bbox_matrix):
            return bboxes
        pixels = denormalize_bboxes(bboxes, params["shape"][:2])
        moved = pixels.copy()
        moved[:, :4] = eight_point_boxes(pixels[:, :4], bbox_matrix)
        return normalize_bboxes(fgeometric.validate_bboxes(moved, output_shape), output_shape)


class GaussianAffine(EightPointAffine):
    """The 2nd place's affine: shift uniform in +-shift x side, scale 2^N(0, scale_sigma)
    (same on both axes), rotation N(0, rotate_sigma) and shear N(0, shear_sigma) degrees."""

    def __init__(
        self,
        shift: float = 0.0625,
        scale_sigma: float = 0.15,
        rotate_sigma: float = 6.0,
        shear_sigma: float = 4.0,
        fill: float = 0,
        p: float = 1.0,
    ) -> None:
        for name, value in (
            ("shift", shift),
            ("scale_sigma", scale_sigma),
            ("rotate_sigma", rotate_sigma),
            ("shear_sigma", shear_sigma),
        ):
            if not value >= 0:
                raise ValueError(f"GaussianAffine: {name} must be >= 0 (got {value})")
        super().__init__(fill=fill, border_mode=cv2.BORDER_CONSTANT, p=p)
        self.shift = shift
        self.scale_sigma = scale_sigma
        self.rotate_sigma = rotate_sigma
        self.shear_sigma = shear_sigma

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        shape = params["shape"][:2]
        rng = self.random_generator
        height, width = shape
        translate = {
            "x": rng.uniform(-self.shift, self.shift) * width,
            "y": rng.uniform(-self.shift, self.shift) * height,
        }
        factor = float(2.0 ** rng.normal(0.0, self.scale_sigma))
        scale = {"x": factor, "y": factor}
        rotate = float(rng.normal(0.0, self.rotate_sigma))
        shear = {
            "x": float(rng.normal(0.0, self.shear_sigma)),
            "y": float(rng.normal(0.0, self.shear_sigma)),
        }
        matrix = fgeometric.create_affine_transformation_matrix(
            translate, shear, scale, rotate, fgeometric.center(shape)
        )
        bbox_matrix = fgeometric.create_affine_transformation_matrix(
            translate, shear, scale, rotate, fgeometric.center_bbox(shape)
        )
        return {
            "rotate": rotate,
            "scale": scale,
            "matrix": matrix,
            "bbox_matrix": bbox_matrix,
            "output_shape": shape,
        }


@dataclass(frozen=True)
class BoxAugmentSettings:
    shift: float = 0.0625  # fraction of the side (2nd place: +-32 px at 512)
    scale_sigma: float = 0.15
    rotate_sigma: float = 6.0
    shear_sigma: float = 4.0
    hflip: float = 0.5  # probability
    blur: float = 0.1  # probability of a Gaussian blur, sigma 0.5-1 px
    noise: float = 0.1  # probability of additive Gaussian noise, std 1-4% of full range
    gamma: float = 0.25  # gamma = 2^U(-gamma, gamma); 0: off (2nd place: 2^N(0, 0.25))


def detector_augmentation(settings: BoxAugmentSettings) -> A.Compose:
    """Geometry first (boxes follow), then pixel-only changes small enough to keep labels valid."""
    transforms: list[A.BasicTransform] = [
        GaussianAffine(
            settings.shift, settings.scale_sigma, settings.rotate_sigma, settings.shear_sigma, p=1.0
        ),
        A.HorizontalFlip(p=settings.hflip),
        A.GaussianBlur(sigma_limit=(0.5, 1.0), blur_limit=0, p=settings.blur),
        A.GaussNoise(std_range=(0.01, 0.04), p=settings.noise),
    ]
    if settings.gamma:
        limit = (100 * 2.0**-settings.gamma, 100 * 2.0**settings.gamma)
        transforms.append(A.RandomGamma(gamma_limit=limit, p=1.0))
    return A.Compose(transforms, bbox_params=box_params())


def box_params() -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc", label_fields=["labels"], min_visibility=MIN_VISIBILITY, clip=True
    )


def apply_seeded_boxes(
    transform: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, boxes (n, 4) xyxy float32, labels (n,) int64) after `transform`, seeded."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = transform(image=image, bboxes=boxes.reshape(-1, 4), labels=labels)
    return (
        out["image"],
        np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
        np.asarray(out["labels"], dtype=np.int64).reshape(-1),
    )
