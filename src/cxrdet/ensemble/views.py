"""TTA view helpers for tuning: which views to use, and per-image mean probabilities.

View names come from the prediction tables; the prediction stages write each image's
views in their TTA order (the original view first), which `view_order` recovers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrdet.ensemble.tables import EnsembleInputError, require_columns
from cxrdet.errors import ConfigError


def view_order(table: pd.DataFrame) -> list[str]:
    """The table's view names in order of first appearance."""
    require_columns(table, ("view",), "prediction table")
    return list(pd.unique(table["view"]))


def select_views(table: pd.DataFrame, views: Sequence[str]) -> pd.DataFrame:
    """The rows of `views`; ConfigError naming a view the table does not have."""
    known = view_order(table)
    unknown = [v for v in views if v not in known]
    if unknown or not views:
        raise ConfigError(f"views {list(views)}: choose one or more of {known}")
    return table[table["view"].isin(views)].reset_index(drop=True)


def first_views(table: pd.DataFrame, count: int) -> pd.DataFrame:
    """The rows of the first `count` views (1st place: up to 15 classifier views)."""
    known = view_order(table)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(known):
        raise ConfigError(f"view count must be an integer in [1, {len(known)}], got {count!r}")
    return select_views(table, known[:count])


def class_columns(
    table: pd.DataFrame, class_names: Sequence[str], column: str = "probs"
) -> pd.DataFrame:
    """`table` with a p_<name> column per class from its array column `column` (the
    classifier table's probs, in class_names order)."""
    require_columns(table, (column,), "classifier table")
    rows = table[column].tolist()
    if any(np.shape(row) != (len(class_names),) for row in rows):
        raise EnsembleInputError(
            f"classifier table: {column} does not hold {len(class_names)} probabilities per row "
            f"(class_names {list(class_names)}); select one model variant first"
        )
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(class_names))
    return table.assign(**{f"p_{name}": values[:, k] for k, name in enumerate(class_names)})


def mean_probabilities(table: pd.DataFrame, columns: Sequence[str] = ("opacity",)) -> pd.DataFrame:
    """Per image (index image_id), the mean of `columns` over every row: views, models and
    fold models (1st place: mean over views, then over models; equal with equal counts)."""
    require_columns(table, ("image_id", *columns), "prediction table")
    return table.groupby("image_id", sort=True)[list(columns)].mean()
