"""One patient's chest geometry: sampled proportions and the lung and heart masks they give."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrdet.data.sources.synthetic.shapes import soft


@dataclass(frozen=True)
class Anatomy:
    """One patient's geometry in normalised units.

    X runs across the image in half-widths from the body midline (image right = patient
    left, as in a PA film); Y runs down the image in heights.
    """

    center: float  # body midline, fraction of the image width
    tilt: float  # degrees
    body: float  # trunk half-width (X)
    apex: float  # lung apices (Y)
    base: float  # patient-left costophrenic angle (Y); the right one sits a little higher
    lateral: float  # lateral lung borders (X)
    medial: float  # medial lung borders (X)
    dome: float  # diaphragm dome height, fraction of lung height
    heart_x: float
    heart_y: float
    heart_w: float  # semi-axes (X, Y)
    heart_h: float
    knob: float  # aortic knob radius (X)
    lung_density: float  # how much less dense aerated lung is than soft tissue
    markings: float  # vascular marking strength
    rib_phase: float  # vertical offset of the rib cage (Y)
    gastric_bubble: bool
    brightness: float
    contrast: float
    gamma: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    apex = rng.uniform(0.10, 0.15)
    base = rng.uniform(0.72, 0.80)
    return Anatomy(
        center=0.5 + rng.normal(0, 0.015),
        tilt=float(np.clip(rng.normal(0, 1.8), -4, 4)),
        body=rng.uniform(0.93, 1.02),
        apex=apex,
        base=base,
        lateral=rng.uniform(0.72, 0.80),
        medial=rng.uniform(0.08, 0.11),
        dome=rng.uniform(0.12, 0.18),
        heart_x=rng.uniform(0.10, 0.15),
        heart_y=base - rng.uniform(0.02, 0.05),
        heart_w=rng.uniform(0.33, 0.38),
        heart_h=rng.uniform(0.12, 0.15),
        knob=rng.uniform(0.04, 0.05),
        lung_density=rng.uniform(0.30, 0.38),
        markings=rng.uniform(0.8, 1.2),
        rib_phase=rng.uniform(-0.015, 0.015),
        gastric_bubble=bool(rng.random() < 0.6),
        brightness=rng.uniform(-0.04, 0.04),
        contrast=rng.uniform(0.95, 1.1),
        gamma=rng.uniform(0.85, 1.15),
    )


def lung_coordinates(
    anatomy: Anatomy, X: np.ndarray, Y: np.ndarray, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """u: 0 at the medial border, 1 at the lateral one; t: 0 at the apex, 1 at the lowest point."""
    lateral = X if side == 1 else -X
    base = anatomy.base if side == 1 else anatomy.base - 0.025  # liver lifts the right side
    u = (lateral - anatomy.medial) / (anatomy.lateral - anatomy.medial)
    t = (Y - anatomy.apex) / (base - anatomy.apex)
    return u, t


def lung_mask(anatomy: Anatomy, u: np.ndarray, t: np.ndarray, px: float, py: float) -> np.ndarray:
    """Rounded apex widening downwards, domed diaphragm below, sharp costophrenic angle."""
    width_px = (anatomy.lateral - anatomy.medial) * px
    height_px = (anatomy.base - anatomy.apex) * py
    grow = np.clip(t / 0.7, 0, 1)
    centre = 0.38 + 0.12 * grow
    half = (0.30 + 0.20 * grow) * np.sqrt(1 - (1 - np.clip(t / 0.35, 0, 1)) ** 2)
    across = (half - np.abs(u - centre)) * width_px
    floor = 1 - anatomy.dome * np.clip(np.sin(np.pi * np.clip(u, 0, 1) ** 1.2), 0, 1) ** 0.5
    down = (floor - t) * height_px
    return soft(np.minimum(np.where(t > 0, across, t * height_px), down), 1.2)


def heart_mask(anatomy: Anatomy, X: np.ndarray, Y: np.ndarray, px: float, py: float) -> np.ndarray:
    # An ellipse tilted so the apex points down towards the patient's left.
    cos, sin = math.cos(math.radians(-18)), math.sin(math.radians(-18))
    dx, dy = (X - anatomy.heart_x) * px, (Y - anatomy.heart_y) * py
    along = cos * dx - sin * dy
    across = sin * dx + cos * dy
    r = np.hypot(along / (anatomy.heart_w * px), across / (anatomy.heart_h * py))
    return soft((1 - r) * min(anatomy.heart_w * px, anatomy.heart_h * py), 1.5)
