"""Ensembling of per-view predictions: box fusion (WBF, 1st place vote merge, NMS,
soft-NMS), the 2nd place's anchor-level fold fusion, box shrink and classifier gating,
and the recipe chaining them (`apply_recipe`). The anchor-level fusion needs torch: import it
from `cxrdet.ensemble.anchor_fusion`, so that the table-only users (tuning, reports) do not
load torch."""

from cxrdet.ensemble.fusion import FUSERS, fuse_boxes, make_fuser
from cxrdet.ensemble.gating import GATES, drop_below, gate_boxes, make_gate
from cxrdet.ensemble.recipe import (
    Ensembled,
    EnsembleRecipe,
    Fusion,
    Gating,
    MemberPredictions,
    apply_recipe,
    image_probabilities,
)
from cxrdet.ensemble.shrink import SHRINK_FACTOR, shrink_boxes
from cxrdet.ensemble.tables import EnsembleInputError
from cxrdet.ensemble.views import (
    class_columns,
    first_views,
    mean_probabilities,
    select_views,
    view_order,
)

__all__ = [
    "FUSERS",
    "GATES",
    "SHRINK_FACTOR",
    "EnsembleInputError",
    "EnsembleRecipe",
    "Ensembled",
    "Fusion",
    "Gating",
    "MemberPredictions",
    "apply_recipe",
    "class_columns",
    "drop_below",
    "first_views",
    "fuse_boxes",
    "gate_boxes",
    "image_probabilities",
    "make_fuser",
    "make_gate",
    "mean_probabilities",
    "select_views",
    "shrink_boxes",
    "view_order",
]
