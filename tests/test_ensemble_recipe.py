"""The ensemble recipe end to end on hand-made per-view tables: view fusion, fold fusion
(skipped with one fold model per image), shrink, gating, cut, top-k; its knobs' errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrdet.config import load_params, validate_params
from cxrdet.ensemble import EnsembleRecipe, Fusion, Gating, MemberPredictions, apply_recipe
from cxrdet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def members(
    folds: tuple[int, ...] = (0,), views: tuple[str, ...] = ("original", "hflip")
) -> pd.DataFrame:
    return pd.DataFrame(
        [("a", f, "retinanet", v) for f in folds for v in views],
        columns=["image_id", "fold", "model", "view"],
    )


def box_table(*rows: tuple[int, str, float, float, float]) -> pd.DataFrame:
    """Rows (fold, view, x, w, score) of image "a": y 100, h 200, class 0."""
    frame = pd.DataFrame(rows, columns=["fold", "view", "x", "w", "score"])
    frame = frame.assign(image_id="a", model="retinanet", y=100.0, h=200.0, class_id=np.int64(0))
    return frame[["image_id", "fold", "model", "view", "x", "y", "w", "h", "score", "class_id"]]


def classifier(opacity: float, folds: tuple[int, ...] = (0,)) -> pd.DataFrame:
    return pd.DataFrame(
        [("a", f, "demo", v, opacity) for f in folds for v in ("original", "flipped")],
        columns=["image_id", "fold", "model", "view", "opacity"],
    )


SIZES = pd.DataFrame({"image_id": ["a"], "width": [1024], "height": [1024]})
PLAIN = EnsembleRecipe(gating=Gating("none", {}), shrink=1.0, score_threshold=0.0)


def test_views_are_fused_per_fold_model_then_shrunk_gated_and_cut():
    boxes = box_table((0, "original", 100.0, 200.0, 0.8), (0, "hflip", 110.0, 200.0, 0.6))
    predictions = MemberPredictions(boxes, members(), classifier(0.5), SIZES)
    merged = apply_recipe(predictions, PLAIN).boxes
    # vote merge: x weighted by confidence (0.8 x 100 + 0.6 x 110) / 1.4, both views vote
    assert len(merged) == 1
    np.testing.assert_allclose(merged[["x", "w"]].to_numpy()[0], [(80 + 66) / 1.4, 200.0])
    np.testing.assert_allclose(merged["score"], [(0.8**2 + 0.6**2) / 1.4])
    final = apply_recipe(
        predictions, EnsembleRecipe()
    ).boxes  # 1st place: x 0.875, product >= 0.2, >= 0.275
    x = (80 + 66) / 1.4 + 200 * 0.0625
    np.testing.assert_allclose(final[["x", "y", "w", "h"]].to_numpy()[0], [x, 112.5, 175.0, 175.0])
    np.testing.assert_allclose(final["score"], [(0.8**2 + 0.6**2) / 1.4 * 0.5])
    assert apply_recipe(predictions, EnsembleRecipe(score_threshold=0.5)).boxes.empty


def test_views_and_counts_are_chosen_and_a_silent_member_votes():
    boxes = box_table((0, "original", 100.0, 200.0, 0.8))  # hflip saw nothing: it votes "no"
    predictions = MemberPredictions(boxes, members(), classifier(0.5), SIZES)
    np.testing.assert_allclose(apply_recipe(predictions, PLAIN).boxes["score"], [0.4])
    only_original = PLAIN.with_changes(detector_views=("original",))
    np.testing.assert_allclose(apply_recipe(predictions, only_original).boxes["score"], [0.8])
    with pytest.raises(ConfigError, match="scale0.8"):
        apply_recipe(predictions, PLAIN.with_changes(detector_views=("scale0.8",)))


def test_folds_are_fused_only_where_an_image_has_several():
    boxes = box_table((0, "original", 100.0, 200.0, 0.8), (1, "original", 300.0, 200.0, 0.6))
    two = MemberPredictions(boxes, members((0, 1), ("original",)), classifier(0.9, (0, 1)), SIZES)
    fused = apply_recipe(two, PLAIN).boxes  # apart: each box has one vote of two
    np.testing.assert_allclose(sorted(fused["score"]), [0.3, 0.4])
    single = apply_recipe(
        two.only_folds([1]), PLAIN.with_changes(fold_fusion=Fusion("wbf", {}))
    ).boxes
    np.testing.assert_allclose(single["score"], [0.6])  # one model per image: no fold fusion at all


def test_top_k_and_no_finding_box_kept_whole():
    boxes = box_table(*[(0, "original", 100.0 * k, 50.0, 0.9 - 0.1 * k) for k in range(5)])
    predictions = MemberPredictions(boxes, members(views=("original",)), classifier(0.3), SIZES)
    top = apply_recipe(predictions, PLAIN.with_changes(max_boxes=2)).boxes
    np.testing.assert_allclose(top["score"], [0.9, 0.8])
    filtered = apply_recipe(
        predictions, PLAIN.with_changes(shrink=0.5, gating=Gating("no_finding", {"low": 0.1}))
    )
    no_finding = filtered.boxes[filtered.boxes["class_id"] == 14]
    assert no_finding[["x", "y", "w", "h"]].to_numpy().tolist() == [[0.0, 0.0, 1.0, 1.0]]
    np.testing.assert_allclose(no_finding["score"], [0.7])  # 1 - P(abnormal)


def test_recipe_round_trips_and_names_bad_knobs():
    params = load_params(ROOT / "params.yaml")
    recipe = EnsembleRecipe.from_params(params.ensemble.model_dump(), key="ensemble")
    assert EnsembleRecipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.view_fusion == Fusion("vote", {"iou_thr": 0.4})
    assert recipe.gating == Gating("product", dict(params.ensemble.gating.params["product"]))
    bad = params.ensemble.model_dump()
    bad["view_fusion"]["params"]["wbf"] = {"iou": 0.4}  # a method not chosen is checked too
    with pytest.raises(
        ConfigError,
        match=r"ensemble.view_fusion.params.wbf: fusion method 'wbf': unknown parameter 'iou'",
    ):
        EnsembleRecipe.from_params(bad, key="ensemble")
    with pytest.raises(ConfigError, match="ensemble: unknown knob 'views'"):
        EnsembleRecipe.from_dict({"views": ["original"]})
    with pytest.raises(ConfigError, match="gating: gating rule 'product': threshold must be in"):
        EnsembleRecipe(gating=Gating("product", {"threshold": 2.0}))


def test_params_errors_name_the_dotted_key():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ensemble"]["max_boxes"] = 0
    raw["tune_ensemble"]["search"]["gating"] = ["product", "magic"]
    raw["tune_ensemble"]["search"]["shrink"] = {"low": 0.9, "high": 0.8}
    with pytest.raises(ConfigError) as caught:
        validate_params(raw)
    message = str(caught.value)
    for key in (
        "ensemble.max_boxes",
        "tune_ensemble.search.gating.1",
        "tune_ensemble.search.shrink",
    ):
        assert key in message, message
