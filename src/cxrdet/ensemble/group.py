"""The unit every box-fusion method works on: the boxes of one image and class from
several ensemble members (TTA views, fold models), and the members' weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np


@dataclass(frozen=True)
class BoxGroup:
    xyxy: np.ndarray  # (n, 4) x_min, y_min, x_max, y_max, original image pixels
    scores: np.ndarray  # (n,) in (0, 1]
    members: np.ndarray  # (n,) index of each box's member into `weights`
    weights: np.ndarray  # (m,) > 0, every member that predicted the image, boxes or not
    size: tuple[float, float] | None  # image width, height (None: the method needs no sizes)


class Fuser(Protocol):
    """A fusion method's parameters; `fuse` maps a group to (xyxy (k, 4), scores (k,))."""

    needs_sizes: ClassVar[bool]

    def fuse(self, group: BoxGroup) -> tuple[np.ndarray, np.ndarray]: ...
