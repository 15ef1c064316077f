"""render_chest: anatomy + findings -> a detector image with each finding's extent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cxrdet.data.sources.synthetic.anatomy import Anatomy
from cxrdet.data.sources.synthetic.findings import ANATOMY_CHANGES, PAINTERS
from cxrdet.data.sources.synthetic.scene import Lesion, Scene, build_scene
from cxrdet.data.sources.synthetic.shapes import smooth_noise
from cxrdet.data.sources.synthetic.tissues import compose


@dataclass
class Chest:
    image: np.ndarray  # float32 in [0, 1], higher = denser (brighter)
    lungs: np.ndarray  # bool, the aerated lung fields before any finding
    lesions: list[Lesion]

    def to_uint8(self) -> np.ndarray:
        return np.round(self.image * 255).astype(np.uint8)


def render_chest(
    anatomy: Anatomy,
    rng: np.random.Generator,
    height: int,
    width: int,
    findings: Sequence[str] = (),
) -> Chest:
    """A chest radiograph with the given findings (kinds from FINDING_KINDS) and their extents."""
    unknown = sorted(set(findings) - set(PAINTERS))
    if unknown:
        raise ValueError(f"unknown finding kinds {unknown}; known: {list(PAINTERS)}")
    for kind in findings:
        if kind in ANATOMY_CHANGES:
            anatomy = ANATOMY_CHANGES[kind](anatomy, rng)
    scene = build_scene(anatomy, height, width)
    lungs = scene.lungs > 0.5
    scene.density = compose(scene, rng)
    lesions = [PAINTERS[kind](scene, rng) for kind in findings]
    return Chest(expose(scene, rng), lungs, lesions)


def expose(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Density -> detector image: tone curve, slow exposure drift, a little blur and noise."""
    a = scene.anatomy
    drift = 0.03 * smooth_noise(rng, scene.X.shape, 0.2 * min(scene.X.shape))
    image = (
        np.clip(a.brightness + a.contrast * (scene.density + drift * (scene.density > 0.1)), 0, 1)
        ** a.gamma
    )
    image = ndimage.gaussian_filter(image, 0.6) + 0.012 * rng.standard_normal(
        image.shape, dtype=np.float32
    )
    return np.clip(image, 0, 1).astype(np.float32)
