"""Params every Optuna study shares (stages tune_anchors and tune_ensemble): where the study
lives, its pruner, and the search ranges of its knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cxrdet.config.section import Range, Section


class SearchRange(Range):
    low: float = Field(gt=0.0)
    high: float = Field(gt=0.0)


class CountRange(Range):
    low: int = Field(ge=1)
    high: int = Field(ge=1)


class PrunerParams(Section):
    name: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(2, ge=0)  # median: trials completed before any pruning
    warmup_epochs: int = Field(1, ge=0)  # median: epochs a trial runs before it can be pruned
    reduction_factor: int = Field(3, ge=2)  # hyperband


class StudyParams(Section):
    """Where an Optuna study lives: a journal file (one machine, parallel workers) or an RDB URL."""

    # null: a journal file results/tuning/<study>.journal; postgresql://... for many machines.
    # Never sqlite for parallel workers (PITFALLS).
    storage: str | None = None
    seed: int = 0  # TPE sampler seed
    startup_trials: int = Field(3, ge=0)  # TPE: random trials before it models the results
