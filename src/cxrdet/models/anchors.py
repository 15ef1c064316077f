"""RetinaNet anchors: their configuration, their grid over the feature pyramid, their fitness.

An anchor set is one base size per pyramid level times `scales` times `ratios`
(height / width, torchvision's convention), so a location holds len(scales) x
len(ratios) anchors: the heads derive their width from `AnchorConfig.per_location`,
never from a hard-coded 9 (PITFALLS).

Strides come from the backbone (timm's `feature_info.reduction()`), not from dividing
the image size by the feature size: an unpadded backbone gives 29 cells for a 256 image
at stride 8, and 256 // 29 = 8 is luck, 256 // 14 = 18 at stride 16 is not.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from cxrdet.config import AnchorParams
from cxrdet.errors import ConfigError

# YOLOv5's autoanchor rule: a box fits an anchor when neither side differs by more than 4x.
FIT_RATIO = 4.0


class AnchorWarning(UserWarning):
    """The anchors cannot match some of the training boxes."""


@dataclass(frozen=True)
class AnchorConfig:
    sizes: tuple[float, ...]  # one base size per pyramid level, finest level first (input pixels)
    scales: tuple[float, ...]  # multipliers of the base size
    ratios: tuple[float, ...]  # height / width

    @property
    def per_location(self) -> int:
        return len(self.scales) * len(self.ratios)

    @classmethod
    def from_dict(cls, content: Mapping[str, Any], key: str = "anchors") -> AnchorConfig:
        """Build and check; `key` names the params key (or file) in error messages."""
        missing = [name for name in ("sizes", "scales", "ratios") if name not in content]
        if missing:
            raise ConfigError(f"{key}: missing {missing}")
        config = cls(
            *(tuple(float(v) for v in content[name]) for name in ("sizes", "scales", "ratios"))
        )
        config.check(key)
        return config

    def to_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in asdict(self).items()}

    def check(self, key: str = "anchors") -> None:
        """ConfigError naming `key`.<field> for an empty list or a non-positive or non-finite
        value."""
        for name, values in asdict(self).items():
            if not values:
                raise ConfigError(f"{key}.{name}: must list at least one value")
            bad = [v for v in values if not (math.isfinite(v) and v > 0)]
            if bad:
                raise ConfigError(f"{key}.{name}: values must be positive and finite (got {bad})")

    def shapes(self) -> np.ndarray:
        """(levels, per_location, 2) anchor widths and heights, in the heads' anchor order."""
        scales, ratios = np.array(self.scales), np.sqrt(np.array(self.ratios))
        widths = (scales[None, :] / ratios[:, None]).reshape(-1)  # ratio-major, as torchvision
        heights = (scales[None, :] * ratios[:, None]).reshape(-1)
        sizes = np.array(self.sizes)[:, None]
        return np.stack([sizes * widths, sizes * heights], axis=-1)


def anchors_from_base(
    base_size: float, strides: Sequence[int], scales: Sequence[float], ratios: Sequence[float]
) -> AnchorConfig:
    """Base size per level = base_size x stride: the reference's 2^(l+2) is base_size 4."""
    return AnchorConfig(tuple(float(base_size * s) for s in strides), tuple(scales), tuple(ratios))


class StridedAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with the backbone's true strides and anchors centred on
    their feature cells ((j + 0.5) x stride, torchvision puts them at j x stride).

    `grid` returns one anchor tensor shared by every image of a batch (all inputs have
    one size), cached per feature-map shapes; `forward` keeps torchvision's interface.
    """

    def __init__(self, config: AnchorConfig, strides: Sequence[int]) -> None:
        if len(config.sizes) != len(strides):
            raise ConfigError(
                f"anchors.sizes: {len(config.sizes)} sizes for {len(strides)} pyramid levels "
                f"(strides {list(strides)})"
            )
        sizes = tuple(tuple(size * scale for scale in config.scales) for size in config.sizes)
        super().__init__(sizes, (config.ratios,) * len(sizes))
        self.config = config
        self.strides = tuple(int(s) for s in strides)
        self._cache: dict[tuple[Any, ...], Tensor] = {}

    def grid(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """(sum over levels of H x W x per_location, 4) anchors, xyxy input pixels."""
        grid_sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        key = (tuple(grid_sizes), dtype, device)
        if key not in self._cache:
            self.set_cell_anchors(torch.float32, device)
            strides = [
                [torch.tensor(s, device=device), torch.tensor(s, device=device)]
                for s in self.strides
            ]
            levels = self.grid_anchors([list(g) for g in grid_sizes], strides)
            centred = [level + stride / 2 for level, stride in zip(levels, self.strides)]
            self._cache[key] = torch.cat(centred).to(dtype)
        return self._cache[key]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        anchors = self.grid(feature_maps)
        return [anchors for _ in image_list.image_sizes]


def best_possible_recall(
    box_wh: np.ndarray, anchor_wh: np.ndarray, ratio: float = FIT_RATIO
) -> float:
    """YOLOv5 autoanchor fitness: the fraction of boxes with an anchor whose width and
    height are both within `ratio` of theirs (PITFALLS: below ~0.98 change the anchors)."""
    if len(box_wh) == 0:
        return 1.0
    r = box_wh[:, None, :] / anchor_wh.reshape(-1, 2)[None, :, :]
    fit = np.minimum(r, 1 / r).min(axis=2).max(axis=1)
    return float((fit > 1 / ratio).mean())


def smallest_matchable_side(config: AnchorConfig, fg_iou: float) -> float:
    """The smallest square box that can reach IoU fg_iou with the smallest anchor:
    a box of side b inside an anchor of area a has IoU b^2 / a (32 px anchors, IoU 0.5: 22.6 px)."""
    widths, heights = config.shapes().reshape(-1, 2).T
    return float(np.sqrt((widths * heights).min() * fg_iou))


def warn_unmatchable(
    box_wh: np.ndarray, config: AnchorConfig, fg_iou: float, what: str = "training boxes"
) -> int:
    """Warn (AnchorWarning) when boxes' smallest side is below what the smallest anchor can
    match; returns how many such boxes there are."""
    limit = smallest_matchable_side(config, fg_iou)
    small = int((box_wh.min(axis=1) < limit).sum()) if len(box_wh) else 0
    if small:
        warnings.warn(
            f"{small} of {len(box_wh)} {what} have a side under {limit:.1f} px, the smallest the "
            f"smallest anchor ({min(config.sizes) * min(config.scales):.1f} px) matches at IoU "
            f"{fg_iou}: add a finer level (detector.p2), smaller anchor sizes, or run tune_anchors",
            AnchorWarning,
            stacklevel=2,
        )
    return small


def resolve_anchors(
    anchors: AnchorParams, strides: Sequence[int], tuned: dict[str, Any] | None, tuned_key: str
) -> AnchorConfig:
    """The tuned anchors (anchors.json content) when given, else params' detector.anchors."""
    if tuned is not None:
        config = AnchorConfig.from_dict(tuned.get("anchors", {}), key=tuned_key)
        if len(config.sizes) != len(strides):
            raise ConfigError(
                f"{tuned_key}: anchors tuned for {len(config.sizes)} levels, the detector has "
                f"{len(strides)} (detector.p2 changed?); rerun tune_anchors"
            )
        return config
    if anchors.sizes is not None:
        if len(anchors.sizes) != len(strides):
            raise ConfigError(
                f"detector.anchors.sizes: {len(anchors.sizes)} sizes for {len(strides)} "
                f"pyramid levels (strides {list(strides)})"
            )
        return AnchorConfig(tuple(anchors.sizes), tuple(anchors.scales), tuple(anchors.ratios))
    return anchors_from_base(anchors.base_size, strides, anchors.scales, anchors.ratios)
