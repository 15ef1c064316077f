"""Overlay grids show something in every tile: hits, misses and false alarms, in turns."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from cxrdet.viz import outcome, overlay_grid, pick_tiles


def boxes(*rows: tuple) -> pd.DataFrame:
    columns = ["image_id", "x", "y", "w", "h", "score"]
    return pd.DataFrame([row + (1.0,) * (6 - len(row)) for row in rows], columns=columns)


def test_outcome_counts_hits_misses_and_false_alarms_at_iou_0_4():
    truth = boxes(("a", 0, 0, 10, 10), ("a", 50, 50, 10, 10))
    predicted = boxes(("a", 1, 1, 10, 10, 0.9), ("a", 80, 80, 5, 5, 0.5))
    assert outcome(truth, predicted) == (1, 1, 1)
    assert outcome(truth.iloc[:0], predicted) == (0, 0, 2)
    assert outcome(truth, predicted.iloc[:0]) == (0, 2, 0)


def test_tiles_take_turns_then_fill_with_truth_first():
    outcomes = {"hit": (1, 0, 0), "miss": (0, 1, 0), "false": (0, 0, 1), "empty": (0, 0, 0)}
    outcomes |= {"hit2": (2, 0, 0)}
    assert pick_tiles(outcomes, 3) == ["hit", "miss", "false"]
    assert pick_tiles(outcomes, 5) == ["hit", "miss", "false", "hit2", "empty"]


def test_overlay_has_a_legend_line_and_titles_that_count(tmp_path):
    truth = boxes(("a", 10, 10, 20, 20))
    predicted = boxes(("a", 11, 11, 20, 20, 0.8), ("b", 5, 5, 10, 10, 0.3))
    image = np.full((64, 64), 90, dtype=np.uint8)
    overlay_grid(
        ["a", "b", "c"], truth, predicted, lambda _: (image, 1.0, 1.0), str, tmp_path / "o.png"
    )
    grid = np.asarray(Image.open(tmp_path / "o.png"))
    assert grid.shape[0] > 256 + 16  # a legend line above the tiles' row
