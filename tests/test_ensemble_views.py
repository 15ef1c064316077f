"""TTA view selection and per-image mean probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.ensemble import (
    EnsembleInputError,
    class_columns,
    first_views,
    mean_probabilities,
    select_views,
    view_order,
)
from cxrdet.errors import ConfigError

VIEWS = ["original", "original+aug1", "inverted", "flipped"]
TABLE = pd.DataFrame(
    {
        "image_id": ["b"] * 4 + ["a"] * 4,
        "fold": 0,
        "model": "binary",
        "view": VIEWS * 2,
        "opacity": [0.2, 0.4, 0.6, 0.8, 0.9, 0.7, 0.5, 0.1],
    }
)


def test_views_in_table_order_and_the_first_n():
    assert view_order(TABLE) == VIEWS
    assert first_views(TABLE, 2)["view"].unique().tolist() == ["original", "original+aug1"]
    means = mean_probabilities(first_views(TABLE, 2))
    assert means.index.tolist() == ["a", "b"]
    np.testing.assert_allclose(means["opacity"], [0.8, 0.3])
    np.testing.assert_allclose(mean_probabilities(TABLE)["opacity"], [0.55, 0.5])
    np.testing.assert_allclose(
        mean_probabilities(select_views(TABLE, ["flipped"]))["opacity"], [0.1, 0.8]
    )


@pytest.mark.parametrize("count", [0, 5, 1.5, True])
def test_bad_view_counts(count):
    with pytest.raises(ConfigError, match="view count"):
        first_views(TABLE, count)


def test_unknown_views_are_named():
    with pytest.raises(ConfigError, match="'hflip'"):
        select_views(TABLE, ["original", "hflip"])
    with pytest.raises(ConfigError, match="choose one or more"):
        select_views(TABLE, [])


def test_class_columns_from_the_classifier_probs():
    table = pd.DataFrame(
        {
            "image_id": ["a", "a"],
            "view": ["original", "flipped"],
            "probs": [np.array([0.5, 0.2, 0.3]), np.array([0.3, 0.4, 0.3])],
        }
    )
    expanded = class_columns(table, ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"])
    means = mean_probabilities(expanded, ["p_Normal", "p_No Lung Opacity / Not Normal"])
    np.testing.assert_allclose(means.loc["a"], [0.4, 0.3])
    with pytest.raises(EnsembleInputError, match="select one model variant"):
        class_columns(table, ["not opacity", "opacity"])
