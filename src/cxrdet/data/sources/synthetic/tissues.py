"""The normal chest's density: body, lungs, mediastinum, bones, hila and vessel markings."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cxrdet.data.sources.synthetic.scene import Scene
from cxrdet.data.sources.synthetic.shapes import smooth_noise, smoothstep, soft


def compose(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Density map of the normal chest: body, lungs, mediastinum, bones, markings."""
    a, X, Y, px, py = scene.anatomy, scene.X, scene.Y, scene.px, scene.py
    body_half = a.body * (0.45 + 0.55 * smoothstep(0.0, a.apex + 0.02, Y))
    body = soft((body_half - np.abs(X)) * px, 2.5)
    thickness = np.sqrt(np.clip(1 - (X / body_half) ** 2, 0, 1))
    density = body * (0.42 + 0.2 * thickness)
    # Heart and abdomen share one soft-tissue level so the heart's lower edge disappears.
    density += 0.05 * body * np.maximum(scene.heart, smoothstep(a.base - 0.12, a.base + 0.06, Y))

    lungs = scene.lungs
    t = np.maximum(np.where(X < 0, scene.side_ut[0][1], scene.side_ut[1][1]), 0)
    inner = np.clip(ndimage.gaussian_filter(lungs, 0.025 * px) * 1.8, 0, 1)  # thinner lung at edges
    darkening = (
        a.lung_density * (1 - 0.3 * smoothstep(0.55, 1.0, t)) * (1 - 0.25 * np.exp(-t / 0.12))
    )
    density -= lungs * inner * darkening

    density += 0.03 * scene.knob
    spine = soft((0.05 - np.abs(X)) * px, 1.5) * body
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (Y - a.rib_phase) / 0.045)
    density += spine * (0.035 + 0.025 * vertebrae**4) * (1 - 0.5 * scene.heart)
    trachea = soft((0.028 - np.abs(X - 0.005)) * px, 1.5) * (
        1 - smoothstep(a.apex + 0.12, a.apex + 0.2, Y)
    )
    density -= 0.10 * trachea * body
    if a.gastric_bubble:
        bubble = np.hypot((X - 0.32) * px / 0.07, (Y - a.base - 0.04) * py / 0.035) / px
        density -= 0.12 * soft((1 - bubble) * 8, 1.0) * body

    density += _bones(scene, lungs) * body
    density += _hila(scene, lungs)
    scene.markings = _vessels(scene, rng, lungs)
    density += scene.markings
    return density


def _bones(scene: Scene, lungs: np.ndarray) -> np.ndarray:
    """Clavicles, posterior ribs (bright bands curving down laterally) and fainter anterior ribs."""
    a, X, Y, py = scene.anatomy, scene.X, scene.Y, scene.py
    reach = np.abs(X)
    clavicle_y = a.apex + 0.045 - 0.13 * reach + 0.05 * reach**2
    clavicle = np.exp(-(((Y - clavicle_y) * py / (0.012 * py + 1)) ** 4))
    clavicle *= smoothstep(0.04, 0.08, reach) * (1 - smoothstep(0.58, 0.68, reach))

    # Posterior ribs leave the spine rising slightly, then arc down along the lateral wall.
    spacing = 0.078
    posterior_y = (Y - a.apex + 0.03 - a.rib_phase + 0.12 * reach - 0.42 * reach**2) / spacing
    nearest = np.round(posterior_y)
    offset = (posterior_y - nearest) * spacing * py
    thick = (0.010 + 0.006 * reach) * py + 0.5
    edge = np.abs(offset / thick)
    rib = np.exp(-(edge**4)) * (0.75 + 0.25 * edge**2)  # the cortex is brighter than the middle
    rib *= (nearest >= 0) & (nearest <= 8)
    rib *= smoothstep(0.04, 0.1, reach) * (
        1 - smoothstep(a.lateral + 0.04, a.lateral + 0.14, reach)
    )

    # Anterior ribs run down towards the midline and fade where cartilage takes over.
    anterior_y = (Y - a.apex - 0.04 - 0.3 * (a.lateral - reach)) / 0.09
    a_offset = (anterior_y - np.round(anterior_y)) * 0.09 * py
    anterior = np.exp(-((a_offset / (0.011 * py + 0.5)) ** 2)) * smoothstep(0.3, 0.5, reach)
    anterior *= (1 - smoothstep(a.lateral - 0.05, a.lateral + 0.05, reach)) * (Y < a.base - 0.05)
    return 0.12 * clavicle + (0.045 * rib + 0.022 * anterior) * (0.25 + 0.75 * lungs)


def _hila(scene: Scene, lungs: np.ndarray) -> np.ndarray:
    a, X, Y, px, py = scene.anatomy, scene.X, scene.Y, scene.px, scene.py
    hy = a.apex + 0.32 * (a.base - a.apex)
    blobs = sum(
        np.exp(
            -(((X - s * (a.medial + 0.08)) * px) ** 2 + ((Y - hy) * py) ** 2)
            / (2 * (0.045 * py) ** 2)
        )
        for s in (-1, 1)
    )
    return 0.10 * blobs * lungs


def _vessels(scene: Scene, rng: np.random.Generator, lungs: np.ndarray) -> np.ndarray:
    """Branching-looking vessel markings: ridges (zero crossings) of smooth noise, strongest
    near the hila and fading to the periphery."""
    a, X, Y = scene.anatomy, scene.X, scene.Y
    size = min(X.shape)
    coarse = smooth_noise(rng, X.shape, 0.018 * size)
    fine = smooth_noise(rng, X.shape, 0.008 * size)
    ridges = 0.6 * np.exp(-((coarse / 0.18) ** 2)) + 0.4 * np.exp(-((fine / 0.22) ** 2))
    hy = a.apex + 0.35 * (a.base - a.apex)
    hilar = np.exp(-np.hypot(np.abs(X) - a.medial - 0.08, (Y - hy) * 1.4) / 0.35)
    return (0.07 * a.markings * ridges * (0.2 + hilar) * lungs).astype(np.float32)
