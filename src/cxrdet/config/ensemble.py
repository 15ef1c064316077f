"""Params of the ensemble: its untuned recipe (`ensemble`) and the Optuna search over it
(`tune_ensemble`).

`ensemble` maps onto cxrdet.ensemble.EnsembleRecipe (`EnsembleRecipe.from_params`), which
checks each fusion method's and gating rule's own parameters when a stage builds it:
importing the ensemble package here would pull torch into every params load. A method's
parameters sit under its name (`params: {vote: {iou_thr: 0.4}}`), so a profile switching
the method adds its parameters instead of merging them into the previous method's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cxrdet.config.section import Range, Section
from cxrdet.config.tuning import CountRange, StudyParams

FusionMethod = Literal["vote", "wbf", "nms", "soft_nms", "soft_nms_linear"]
GatingRule = Literal["none", "product", "sqrt", "no_finding"]
ParamValue = float | int | str


class FusionParams(Section):
    """A box-fusion method (cxrdet.ensemble.FUSERS) and, by method, their parameters
    (the method's defaults where not given)."""

    method: FusionMethod = "vote"
    params: dict[FusionMethod, dict[str, ParamValue]] = {"vote": {"iou_thr": 0.4}}


class GatingParams(Section):
    """A classifier gating rule (cxrdet.ensemble.GATES) and, by rule, their parameters."""

    rule: GatingRule = "product"
    params: dict[GatingRule, dict[str, ParamValue]] = {"product": {"threshold": 0.2}}


class EnsembleParams(Section):
    """The untuned ensemble: what tune_ensemble starts from and must beat, and what
    evaluate and predict use when tune_ensemble is disabled."""

    detector_views: list[str] | None = Field(None, min_length=1)  # null: every view written
    classifier_views: int | None = Field(None, ge=1)  # the first N classifier TTA views; null: all
    view_fusion: FusionParams = FusionParams()  # across one fold model's TTA views
    fold_fusion: FusionParams = FusionParams()  # across fold models (evaluate and predict)
    gating: GatingParams = GatingParams()
    shrink: float = Field(0.875, gt=0.0, le=2.0)  # w, h scaled about the centre; 1: off
    score_threshold: float = Field(0.275, ge=0.0, le=1.0)  # final boxes scoring below are dropped
    max_boxes: int = Field(4, ge=1)  # per image, best first


class UnitRange(Range):
    """A search range inside [0, 1] (thresholds, weights)."""

    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.0)


class ShrinkRange(Range):
    low: float = Field(gt=0.0, le=2.0)
    high: float = Field(gt=0.0, le=2.0)


class EnsembleSearchParams(Section):
    """Optuna's search space over the cached out-of-fold predictions."""

    detector_views: bool = (
        True  # choose a subset of the detector's TTA views (the original always in)
    )
    classifier_views: bool = True  # choose how many classifier TTA views to average
    view_fusion: list[FusionMethod] = Field(["vote", "wbf", "soft_nms"], min_length=1)
    iou_thr: UnitRange = UnitRange(low=0.3, high=0.7)  # vote, wbf, nms, soft_nms_linear
    sigma: UnitRange = UnitRange(low=0.1, high=1.0)  # soft_nms (its paper: 0.5)
    conf_types: list[Literal["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]] = Field(
        ["avg", "max"], min_length=1
    )  # wbf
    gating: list[GatingRule] = Field(["none", "product", "sqrt"], min_length=1)
    gate_threshold: UnitRange = UnitRange(low=0.0, high=0.5)  # product, sqrt
    not_normal_weight: UnitRange = UnitRange(low=0.0, high=0.5)  # sqrt (2nd place: 0.1)
    no_finding_low: UnitRange = UnitRange(low=0.0, high=0.3)  # no_finding (baseline: 0.08)
    no_finding_high: UnitRange = UnitRange(low=0.5, high=1.0)  # no_finding (baseline: 0.95)
    shrink: ShrinkRange = ShrinkRange(low=0.75, high=1.0)
    score_threshold: UnitRange = UnitRange(low=0.0, high=0.6)
    max_boxes: CountRange = CountRange(low=1, high=8)


class TuneEnsembleParams(Section):
    """Stage tune_ensemble: the ensemble recipe searched on the cached out-of-fold predictions."""

    enabled: bool = True  # false: results/tuning/ensemble.json holds params' `ensemble` as it is
    trials: int = Field(30, ge=1)  # finished trials (failed ones are recorded and do not count)
    # The metric maximised (cxrdet.formats.resolve_objective): auto is the format's own (rsna: the
    # RSNA score; vinbigdata: its mAP@0.4; folder, nih: VOC mAP@0.4), map or rsna choose one on any
    # format. Under plain mAP the score thresholds are not searched (low end kept).
    objective: Literal["auto", "map", "rsna"] = "auto"
    search: EnsembleSearchParams = EnsembleSearchParams()
    study: StudyParams = StudyParams(startup_trials=10)
