"""Shape primitives the painters share: soft edges, smooth noise, a mask's bounding box."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]  # x, y, w, h in pixels


def smoothstep(low: float, high: float, value: np.ndarray) -> np.ndarray:
    t = np.clip((value - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def soft(margin_px: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """0 outside, 1 inside, a ~2*edge pixel ramp across a border at margin 0."""
    return 0.5 * (1.0 + np.tanh(margin_px / edge))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian-filtered noise; large sigmas are made at low resolution (fast)."""
    factor = max(1, int(sigma // 3))
    small = (shape[0] // factor + 2, shape[1] // factor + 2)
    noise = ndimage.gaussian_filter(
        rng.standard_normal(small, dtype=np.float32), sigma / factor, mode="wrap"
    )
    if factor > 1:
        noise = ndimage.zoom(noise, factor, order=1)
    noise = noise[: shape[0], : shape[1]]
    return ((noise - noise.mean()) / (noise.std() + 1e-9)).astype(np.float32)


def mask_box(mask: np.ndarray) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
