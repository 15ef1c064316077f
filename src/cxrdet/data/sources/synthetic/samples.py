"""samples.png: a few images per format with their boxes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.viz import sample_grid


@dataclass
class Sample:
    """Keeps a few images per format for samples.png: boxed ones first, then one negative."""

    fmt: str
    wanted_boxed: int = 2
    wanted_plain: int = 1
    items: list[tuple[np.ndarray, pd.DataFrame, str]] = field(default_factory=list)
    _boxed: int = 0
    _plain: int = 0

    def offer(self, pixels: np.ndarray, boxes: list[dict[str, Any]], title: str) -> None:
        if boxes and self._boxed < self.wanted_boxed:
            self._boxed += 1
        elif not boxes and self._plain < self.wanted_plain:
            self._plain += 1
        else:
            return
        table = pd.DataFrame(boxes, columns=["x", "y", "w", "h", "class_id", "class_name"])
        item = (pixels, table, f"{self.fmt}: {title}")
        self.items.insert(self._boxed - 1 if boxes else len(self.items), item)


def write_samples(path: Path, samples: list[Sample]) -> None:
    """One column per format, boxed examples above a negative one."""
    depth = max(len(sample.items) for sample in samples)
    items = [
        sample.items[row] for row in range(depth) for sample in samples if row < len(sample.items)
    ]
    sample_grid(items, path, columns=len(samples))
