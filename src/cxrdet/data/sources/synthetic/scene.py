"""The scene a chest is painted in: coordinate grids, lung/heart masks, placed lesions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cxrdet.data.sources.synthetic.anatomy import (
    Anatomy,
    heart_mask,
    lung_coordinates,
    lung_mask,
)
from cxrdet.data.sources.synthetic.shapes import Box, mask_box, soft


@dataclass
class Lesion:
    kind: str
    box: Box
    mask: np.ndarray  # bool, the finding's extent


@dataclass
class Scene:
    """Coordinate grids and anatomical masks that the finding painters draw into."""

    anatomy: Anatomy
    xx: np.ndarray  # pixel grids
    yy: np.ndarray
    X: np.ndarray  # normalised (rotated) coordinates
    Y: np.ndarray
    px: float  # pixels per X unit
    py: float  # pixels per Y unit
    side_lungs: list[np.ndarray]  # soft masks, image-left then image-right lung
    side_ut: list[tuple[np.ndarray, np.ndarray]]  # per-lung (u across, t down), 0..1 inside
    heart: np.ndarray
    knob: np.ndarray
    markings: np.ndarray = field(init=False)  # vessel texture (pneumothorax removes it)
    density: np.ndarray = field(init=False)
    occupied: np.ndarray = field(init=False)
    _edge_distance: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.occupied = np.zeros(self.X.shape, bool)

    @property
    def lungs(self) -> np.ndarray:
        return np.maximum(*self.side_lungs)

    def lung_hard(self, side: int) -> np.ndarray:
        return self.side_lungs[side] > 0.5

    def edge_distance(self, side: int) -> np.ndarray:
        if side not in self._edge_distance:
            self._edge_distance[side] = ndimage.distance_transform_edt(self.lung_hard(side))
        return self._edge_distance[side]

    def pick_point(
        self, rng: np.random.Generator, side: int, clearance: float
    ) -> tuple[float, float]:
        """A random (y, x) inside one lung, away from its border and from earlier lesions,
        favouring the lower zones where pneumonia usually sits."""
        inside = self.lung_hard(side)
        free = ndimage.distance_transform_edt(~self.occupied) if self.occupied.any() else np.inf
        for scale in (1.0, 0.5, 0.0):
            candidates = (
                inside & (self.edge_distance(side) > clearance * scale) & (free > clearance * scale)
            )
            if candidates.any():
                break
        else:
            candidates = inside
        index = np.flatnonzero(candidates)
        weight = 0.3 + np.clip(self.side_ut[side][1].ravel()[index], 0, 1)
        chosen = rng.choice(index, p=weight / weight.sum())
        return float(chosen // self.X.shape[1]), float(chosen % self.X.shape[1])

    def add(self, layer: np.ndarray, mask: np.ndarray, kind: str) -> Lesion:
        self.density += layer
        self.occupied |= mask
        return Lesion(kind, mask_box(mask), mask)


def build_scene(anatomy: Anatomy, height: int, width: int) -> Scene:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Python floats keep the float32 grids float32 (numpy scalars would promote to float64).
    cos, sin = math.cos(math.radians(anatomy.tilt)), math.sin(math.radians(anatomy.tilt))
    cy, cx = (height - 1) / 2, (width - 1) / 2
    xr = cos * (xx - cx) + sin * (yy - cy) + cx
    yr = -sin * (xx - cx) + cos * (yy - cy) + cy
    px, py = width / 2, float(height)
    X = (xr - anatomy.center * width) / px
    Y = yr / py
    side_ut = [lung_coordinates(anatomy, X, Y, side) for side in (0, 1)]
    heart = heart_mask(anatomy, X, Y, px, py)
    knob = soft(
        anatomy.knob * px
        - np.hypot((X - anatomy.medial - 0.015) * px, (Y - anatomy.apex - 0.2) * py)
    )
    side_lungs = [lung_mask(anatomy, u, t, px, py) * (1 - heart) * (1 - knob) for u, t in side_ut]
    return Scene(anatomy, xx, yy, X, Y, px, py, side_lungs, side_ut, heart, knob)
