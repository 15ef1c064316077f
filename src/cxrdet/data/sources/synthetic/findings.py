"""Finding painters (one per kind in FINDING_KINDS) and the findings that reshape anatomy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from scipy import ndimage

from cxrdet.data.sources.synthetic.anatomy import Anatomy
from cxrdet.data.sources.synthetic.scene import Lesion, Scene
from cxrdet.data.sources.synthetic.shapes import mask_box, smooth_noise, smoothstep, soft

# Findings that change the anatomy itself rather than adding a lesion on top.
ANATOMY_CHANGES: dict[str, Callable[[Anatomy, np.random.Generator], Anatomy]] = {
    "cardiomegaly": lambda a, rng: replace(a, heart_w=a.heart_w * rng.uniform(1.3, 1.45)),
    "aortic": lambda a, rng: replace(a, knob=a.knob * rng.uniform(1.6, 1.9)),
    "emphysema": lambda a, rng: replace(
        a,
        lateral=a.lateral + 0.04,
        base=a.base + 0.04,
        dome=a.dome * 0.4,
        lung_density=a.lung_density * 1.15,
        markings=a.markings * 0.5,
    ),
}


def _opacity(
    scene: Scene, rng: np.random.Generator, amp: tuple[float, float] = (0.16, 0.26)
) -> Lesion:
    """Consolidation: an irregular blob of a few merged Gaussians, patchy, inside one lung."""
    side = int(rng.integers(2))
    size = min(scene.X.shape)
    radius = rng.uniform(0.07, 0.11) * size
    cy, cx = scene.pick_point(rng, side, 0.6 * radius)
    count = int(rng.integers(2, 6))
    offsets = np.vstack([[0.0, 0.0], rng.normal(0, 0.45 * radius, (count - 1, 2))])
    sigmas = rng.uniform(0.3, 0.55, count) * radius
    weights = np.concatenate([[1.0], rng.uniform(0.5, 0.9, count - 1)])
    blob = sum(
        w * np.exp(-((scene.yy - cy - dy) ** 2 + (scene.xx - cx - dx) ** 2) / (2 * s**2))
        for (dy, dx), s, w in zip(offsets, sigmas, weights, strict=True)
    )
    blob *= 0.85 + 0.15 * smooth_noise(rng, blob.shape, 0.15 * radius)  # patchy
    lung = scene.side_lungs[side]
    blob /= blob[lung > 0.5].max()  # peak inside the lung is 1: the mask is never empty
    mask = (blob > 0.4) & (lung > 0.5)
    return scene.add(rng.uniform(*amp) * smoothstep(0.25, 0.65, blob) * lung, mask, "opacity")


def _faint_opacity(scene: Scene, rng: np.random.Generator) -> Lesion:
    lesion = _opacity(scene, rng, amp=(0.12, 0.17))
    lesion.kind = "faint_opacity"
    return lesion


def _round_lesion(
    scene: Scene, rng: np.random.Generator, kind: str, radius_range: tuple[float, float]
) -> Lesion:
    """Nodule or mass: a sharp-edged, slightly lobulated round density."""
    side = int(rng.integers(2))
    radius = max(2.5, rng.uniform(*radius_range) * min(scene.X.shape))
    cy, cx = scene.pick_point(rng, side, radius + 2)
    dy, dx = scene.yy - cy, scene.xx - cx
    lobes = 1 + 0.12 * np.sin(3 * np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi))
    r = np.hypot(dy, dx) / (radius * lobes)
    profile = ndimage.gaussian_filter(np.sqrt(np.clip(1 - r**2, 0, 1)), 0.7)
    lung = scene.side_lungs[side]
    mask = (r <= 1) & (lung > 0.5)
    return scene.add(rng.uniform(0.16, 0.26) * profile * lung, mask, kind)


def _effusion(scene: Scene, rng: np.random.Generator) -> Lesion:
    """Fluid filling the lung base with a meniscus climbing laterally (blunted angle)."""
    side = int(rng.integers(2))
    u, t = scene.side_ut[side]
    a = scene.anatomy
    level = rng.uniform(0.72, 0.86) - 0.25 * np.clip(u, 0, 1) ** 2
    margin = (t - level) * (a.base - a.apex) * scene.py
    lung = scene.side_lungs[side]
    mask = (margin > 0) & (lung > 0.5)
    layer = a.lung_density * rng.uniform(0.8, 1.0) * smoothstep(-2, 6, margin) * lung
    return scene.add(layer, mask, "effusion")


def _cardiomegaly(scene: Scene, rng: np.random.Generator) -> Lesion:
    # The enlargement itself is an anatomy change; the box is the visible heart shadow.
    mask = (scene.heart > 0.5) & (scene.Y < scene.anatomy.base + 0.01)
    return Lesion("cardiomegaly", mask_box(mask), mask)


def _aortic(scene: Scene, rng: np.random.Generator) -> Lesion:
    return scene.add(0.04 * scene.knob, scene.knob > 0.5, "aortic")


def _pleural_thickening(scene: Scene, rng: np.random.Generator) -> Lesion:
    """A dense band along the apical or lateral pleura."""
    side = int(rng.integers(2))
    u, t = scene.side_ut[side]
    band = scene.edge_distance(side) < rng.uniform(0.012, 0.022) * min(scene.X.shape) + 1
    zone = (
        (t < rng.uniform(0.2, 0.3)) if rng.random() < 0.5 else ((u > 0.75) & (t > 0.3) & (t < 0.75))
    )
    mask = band & zone & scene.lung_hard(side)
    layer = 0.22 * ndimage.gaussian_filter(mask.astype(np.float32), 1.0) * scene.side_lungs[side]
    return scene.add(layer, mask, "pleural_thickening")


def _pneumothorax(scene: Scene, rng: np.random.Generator) -> Lesion:
    """Apical-lateral air rim: no lung markings, darker, a thin bright visceral pleural line."""
    side = int(rng.integers(2))
    u, t = scene.side_ut[side]
    rim = rng.uniform(0.04, 0.07) * min(scene.X.shape)
    distance = scene.edge_distance(side)
    inside = scene.lung_hard(side) & (t < rng.uniform(0.55, 0.8))
    mask = inside & (distance < rim)
    line = np.exp(-(((distance - rim) / 0.8) ** 2)) * inside
    layer = -scene.markings * mask - 0.06 * mask + 0.10 * line
    return scene.add(layer, mask, "pneumothorax")


def _atelectasis(scene: Scene, rng: np.random.Generator) -> Lesion:
    """Plate-like (linear) density, roughly horizontal, in a lower zone."""
    side = int(rng.integers(2))
    size = min(scene.X.shape)
    long, short = rng.uniform(0.05, 0.09) * size, rng.uniform(0.008, 0.014) * size + 0.8
    cy, cx = scene.pick_point(rng, side, long * 0.5)
    angle = np.deg2rad(rng.uniform(-25, 25))
    along = np.cos(angle) * (scene.xx - cx) + np.sin(angle) * (scene.yy - cy)
    across = -np.sin(angle) * (scene.xx - cx) + np.cos(angle) * (scene.yy - cy)
    plate = np.exp(-(along**2) / (2 * long**2) - across**2 / (2 * short**2))
    lung = scene.side_lungs[side]
    mask = (plate > 0.3) & (lung > 0.5)
    return scene.add(rng.uniform(0.16, 0.24) * plate * lung, mask, "atelectasis")


def _edema(scene: Scene, rng: np.random.Generator) -> Lesion:
    """Bilateral perihilar haze (bat-wing)."""
    a, X, Y = scene.anatomy, scene.X, scene.Y
    hy = a.apex + 0.4 * (a.base - a.apex)
    haze = np.exp(-((np.abs(X) - a.medial - 0.12) ** 2 / 0.06 + (Y - hy) ** 2 / 0.03))
    mask = (haze > 0.35) & (scene.lungs > 0.5)
    return scene.add(rng.uniform(0.10, 0.15) * haze * scene.lungs, mask, "edema")


def _emphysema(scene: Scene, rng: np.random.Generator) -> Lesion:
    # Bigger, darker, flatter lungs come from the anatomy change.
    mask = scene.lungs > 0.5
    return Lesion("emphysema", mask_box(mask), mask)


def _fibrosis(scene: Scene, rng: np.random.Generator) -> Lesion:
    """Reticular (net-like) densities in the lower, peripheral zone of one lung."""
    side = int(rng.integers(2))
    u, t = scene.side_ut[side]
    net = np.exp(-((smooth_noise(rng, scene.X.shape, 0.006 * min(scene.X.shape) + 0.6) / 0.3) ** 2))
    zone = smoothstep(0.35, 0.8, t) * smoothstep(0.2, 0.7, u)
    lung = scene.side_lungs[side]
    mask = (zone > 0.3) & (lung > 0.5)
    return scene.add(0.12 * net * zone * lung, mask, "fibrosis")


def _hernia(scene: Scene, rng: np.random.Generator) -> Lesion:
    """Hiatal hernia: a round retrocardiac density with an air-fluid level."""
    a = scene.anatomy
    radius = 0.07 * scene.px
    cy, cx = (a.base - 0.06) * scene.py, (a.center + 0.02) * scene.xx.shape[1]
    r = np.hypot(scene.yy - cy, scene.xx - cx) / radius
    disc = soft((1 - r) * radius, 1.0)
    air = disc * (scene.yy < cy - 0.2 * radius)
    return scene.add(0.08 * disc - 0.14 * air, r <= 1, "hernia")


PAINTERS: dict[str, Callable[[Scene, np.random.Generator], Lesion]] = {
    "opacity": _opacity,
    "faint_opacity": _faint_opacity,
    "nodule": lambda s, rng: _round_lesion(s, rng, "nodule", (0.014, 0.03)),
    "mass": lambda s, rng: _round_lesion(s, rng, "mass", (0.04, 0.065)),
    "effusion": _effusion,
    "cardiomegaly": _cardiomegaly,
    "aortic": _aortic,
    "pleural_thickening": _pleural_thickening,
    "pneumothorax": _pneumothorax,
    "atelectasis": _atelectasis,
    "edema": _edema,
    "emphysema": _emphysema,
    "fibrosis": _fibrosis,
    "hernia": _hernia,
}
FINDING_KINDS = tuple(PAINTERS)
