"""Box shrink (1st place, 87.5%): centres stay, width and height scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.ensemble import SHRINK_FACTOR, shrink_boxes
from cxrdet.errors import ConfigError

BOXES = pd.DataFrame(
    {
        "image_id": ["a", "b"],
        "x": [100.0, 0.0],
        "y": [200.0, 10.0],
        "w": [80.0, 16.0],
        "h": [40.0, 8.0],
        "score": [0.9, 0.3],
    }
)


def centres(frame: pd.DataFrame) -> np.ndarray:
    return np.c_[frame["x"] + frame["w"] / 2, frame["y"] + frame["h"] / 2]


def test_default_shrink_is_the_first_places():
    shrunk = shrink_boxes(BOXES)
    assert SHRINK_FACTOR == 0.875
    # 80 x 40 at (100, 200), centre (140, 220) -> 70 x 35 at (105, 202.5)
    np.testing.assert_allclose(shrunk[["x", "y", "w", "h"]].iloc[0], [105.0, 202.5, 70.0, 35.0])
    np.testing.assert_allclose(shrunk[["x", "y", "w", "h"]].iloc[1], [1.0, 10.5, 14.0, 7.0])
    np.testing.assert_allclose(centres(shrunk), centres(BOXES))
    np.testing.assert_allclose(shrunk["w"] * shrunk["h"] / (BOXES["w"] * BOXES["h"]), 0.765625)
    pd.testing.assert_frame_equal(shrunk[["image_id", "score"]], BOXES[["image_id", "score"]])


def test_other_factors_and_the_input_is_untouched():
    before = BOXES.copy()
    np.testing.assert_allclose(shrink_boxes(BOXES, 1.5)[["x", "w"]].iloc[0], [80.0, 120.0])
    pd.testing.assert_frame_equal(shrink_boxes(BOXES, 1.0), BOXES)
    pd.testing.assert_frame_equal(BOXES, before)


@pytest.mark.parametrize("factor", [0.0, -0.5, float("nan"), float("inf"), "0.8"])
def test_bad_factors_are_config_errors(factor):
    with pytest.raises(ConfigError, match="shrink factor"):
        shrink_boxes(BOXES, factor)
