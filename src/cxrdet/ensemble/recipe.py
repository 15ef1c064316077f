"""The ensemble recipe: per-view predictions of fold models -> final boxes per image.

One function, `apply_recipe`, serves the tuning stage (out-of-fold predictions read from
disk), the evaluate stage and `cxrdet predict` (predictions of new images), so what is
tuned is exactly what is served. Its steps:

1. keep the recipe's detector TTA views, fuse them per fold model (`view_fusion`);
2. fuse the fold models per image (`fold_fusion`), skipped where an image has one
   model: out of fold, every image was predicted by one fold model, so tuning sees
   steps 1 and 3-6 only, and the fold fusion method comes from params;
3. shrink the boxes about their centres;
4. gate them with the classifier probabilities: the mean over the classifier folds,
   variants and the first `classifier_views` TTA views of each image (after the shrink,
   so the VinBigData no-finding box stays `0 0 1 1`);
5. drop boxes scoring below `score_threshold`;
6. keep each image's `max_boxes` best. No NMS on the final boxes (the 1st place found
   it hurt).

The 1st place gated each model's boxes before fusing the models; gating after fusion
keeps one order for out-of-fold tuning and for the fold ensemble, and lets the
no-finding rule add its box once per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from cxrdet.ensemble.fusion import fuse_boxes, make_fuser
from cxrdet.ensemble.gating import drop_below, gate_boxes, make_gate
from cxrdet.ensemble.shrink import SHRINK_FACTOR, shrink_boxes
from cxrdet.ensemble.tables import VALUE_COLUMNS, EnsembleInputError, check_number, require_columns
from cxrdet.ensemble.views import class_columns, first_views, mean_probabilities, select_views
from cxrdet.errors import ConfigError

FINAL_COLUMNS = ["image_id", *VALUE_COLUMNS]


@dataclass(frozen=True)
class Fusion:
    method: str = "vote"
    params: Mapping[str, Any] = field(default_factory=lambda: {"iou_thr": 0.4})  # 1st place


@dataclass(frozen=True)
class Gating:
    rule: str = "product"
    params: Mapping[str, Any] = field(default_factory=lambda: {"threshold": 0.2})  # 1st place


@dataclass(frozen=True)
class EnsembleRecipe:
    """Every knob of the post-processing (params' `ensemble`: `from_params`; ensemble.json's
    "recipe": `to_dict` / `from_dict`)."""

    detector_views: tuple[str, ...] | None = None  # None: every view
    classifier_views: int | None = None  # the first N classifier TTA views; None: all
    view_fusion: Fusion = Fusion()
    fold_fusion: Fusion = Fusion()
    gating: Gating = Gating()
    shrink: float = SHRINK_FACTOR
    score_threshold: float = 0.275  # 1st place's final cut
    max_boxes: int = 4

    def __post_init__(self) -> None:
        """ConfigError naming the knob of a bad value (unknown method or parameter, range)."""
        for name in ("view_fusion", "fold_fusion"):
            fusion = getattr(self, name)
            _named(name, lambda f=fusion: make_fuser(f.method, **f.params))
        _named("gating", lambda: make_gate(self.gating.rule, **self.gating.params))
        check_number("shrink", self.shrink, 0.0, 2.0, low_open=True)
        check_number("score_threshold", self.score_threshold, 0.0, 1.0)
        _positive_integer("max_boxes", self.max_boxes)
        if self.classifier_views is not None:
            _positive_integer("classifier_views", self.classifier_views)
        if self.detector_views is not None and not self.detector_views:
            raise ConfigError("detector_views must name one or more views (or be null: all)")

    def to_dict(self) -> dict[str, Any]:
        content = asdict(self)
        content["detector_views"] = (
            None if self.detector_views is None else list(self.detector_views)
        )
        for name in ("view_fusion", "fold_fusion", "gating"):
            content[name]["params"] = dict(content[name]["params"])
        return content

    @classmethod
    def from_dict(cls, content: Mapping[str, Any], key: str = "ensemble") -> EnsembleRecipe:
        """The recipe of a `to_dict` mapping (params' `ensemble`, ensemble.json's "recipe");
        errors start with `key`."""
        try:
            values = dict(content)
            unknown = sorted(set(values) - set(cls.__dataclass_fields__))
            if unknown:
                raise ConfigError(f"unknown knob {unknown[0]!r}")
            for name, kind in (
                ("view_fusion", Fusion),
                ("fold_fusion", Fusion),
                ("gating", Gating),
            ):
                if name in values:
                    values[name] = kind(**values[name])
            if values.get("detector_views") is not None:
                values["detector_views"] = tuple(values["detector_views"])
            return cls(**values)
        except (ConfigError, TypeError) as error:
            raise ConfigError(f"{key}: {error}") from None

    @classmethod
    def from_params(cls, content: Mapping[str, Any], key: str = "ensemble") -> EnsembleRecipe:
        """The recipe of params' `ensemble` mapping, whose fusions and gating list parameters by
        method: `{method: vote, params: {vote: {...}, wbf: {...}}}`. Every listed method's
        parameters are checked, the chosen one's used; errors name the dotted key."""
        values = dict(content)
        for name, choice, make in (
            ("view_fusion", "method", make_fuser),
            ("fold_fusion", "method", make_fuser),
            ("gating", "rule", make_gate),
        ):
            if name not in values:
                continue
            section = dict(values[name])
            by_method = dict(section.get("params") or {})
            for method, params in by_method.items():
                _named(
                    f"{key}.{name}.params.{method}", lambda m=method, p=params, f=make: f(m, **p)
                )
            section["params"] = by_method.get(section.get(choice), {})
            values[name] = section
        return cls.from_dict(values, key)

    def with_changes(self, **changes: Any) -> EnsembleRecipe:
        return replace(self, **changes)


@dataclass(frozen=True)
class MemberPredictions:
    """Per-view predictions of the ensemble members on a set of images.

    boxes, images: the detector tables of cxrdet.infer.detector_tta (images lists every
        image, fold model and view, with or without boxes: a member that saw nothing votes);
    classifier: one row per image, fold, model (variant) and TTA view: opacity, probs;
    sizes: image_id, width, height (original pixels).
    """

    boxes: pd.DataFrame
    images: pd.DataFrame
    classifier: pd.DataFrame
    sizes: pd.DataFrame

    def __post_init__(self) -> None:
        require_columns(self.images, ("image_id", "fold", "model", "view"), "detector images table")
        require_columns(
            self.classifier, ("image_id", "fold", "model", "view", "opacity"), "classifier table"
        )
        require_columns(self.sizes, ("image_id", "width", "height"), "sizes")

    def only_folds(self, folds: Sequence[int]) -> MemberPredictions:
        """The predictions of the fold models `folds` (detectors and classifiers)."""
        keep = list(folds)
        return replace(
            self,
            boxes=self.boxes[self.boxes["fold"].isin(keep)],
            images=self.images[self.images["fold"].isin(keep)],
            classifier=self.classifier[self.classifier["fold"].isin(keep)],
        )


@dataclass(frozen=True)
class Ensembled:
    boxes: pd.DataFrame  # image_id, x, y, w, h, score, class_id (original pixels), best first
    probabilities: pd.DataFrame  # per image (index image_id): opacity and p_<class> columns


def image_probabilities(
    classifier: pd.DataFrame, views: int | None, class_names: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    """Per image: `opacity`, the mean P(opacity) over every classifier row of its first
    `views` TTA views; and p_<class> for the classes of the models in `class_names`
    (model -> the classes of its `probs`, e.g. the 3 RSNA image labels), averaged over
    the models that have them (the sqrt rule reads P(not normal) there)."""
    if classifier.empty:
        return pd.DataFrame(
            {"opacity": pd.Series(dtype=np.float64)}, index=pd.Index([], name="image_id")
        )
    rows = classifier if views is None else first_views(classifier, views)
    probabilities = mean_probabilities(rows, ("opacity",))
    parts = []
    for model, names in class_names.items():
        own = rows[rows["model"] == model]
        if len(own):
            columns = [f"p_{name}" for name in names]
            parts.append(class_columns(own, names)[["image_id", *columns]])
    if parts:
        per_class = pd.concat(parts, ignore_index=True).groupby("image_id", sort=True).mean()
        probabilities = probabilities.join(per_class)
    return probabilities


def apply_recipe(
    predictions: MemberPredictions,
    recipe: EnsembleRecipe,
    class_names: Mapping[str, Sequence[str]] | None = None,
) -> Ensembled:
    """The final boxes of every image of `predictions` (see the module docstring).
    `class_names`: classifier model -> the classes of its probs (image_probabilities)."""
    boxes, members = predictions.boxes, predictions.images
    if recipe.detector_views is not None:
        members = select_views(members, recipe.detector_views)  # names a view that is not there
        boxes = boxes[boxes["view"].isin(recipe.detector_views)]
    view = recipe.view_fusion
    fused = fuse_boxes(
        boxes, view.method, predictions.sizes, over=("view",), members=members, **view.params
    )
    models = members[["image_id", "fold", "model"]].drop_duplicates()
    if models["image_id"].duplicated().any():
        fold = recipe.fold_fusion
        fused = fuse_boxes(
            fused,
            fold.method,
            predictions.sizes,
            over=("fold", "model"),
            members=models,
            **fold.params,
        )
    fused = fused[FINAL_COLUMNS]
    probabilities = image_probabilities(
        predictions.classifier, recipe.classifier_views, class_names or {}
    )
    unknown = np.setdiff1d(members["image_id"].unique(), probabilities.index)
    if recipe.gating.rule != "none" and len(unknown):
        raise EnsembleInputError(
            f"the classifiers did not predict {len(unknown)} of the detectors' images, "
            f"e.g. {unknown[0]!r}"
        )
    if recipe.shrink != 1.0:
        fused = shrink_boxes(fused, recipe.shrink)
    gated = gate_boxes(fused, probabilities, recipe.gating.rule, **recipe.gating.params)
    kept = drop_below(gated, recipe.score_threshold)
    ranked = kept.sort_values(["image_id", "score"], ascending=[True, False], kind="stable")
    final = ranked.groupby("image_id", sort=False).head(recipe.max_boxes).reset_index(drop=True)
    return Ensembled(final[FINAL_COLUMNS], probabilities)


def _positive_integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _named(name: str, build: Any) -> None:
    try:
        build()
    except ConfigError as error:
        raise ConfigError(f"{name}: {error}") from None
