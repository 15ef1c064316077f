"""A tiny ensemble study on synthetic cached predictions (bench/tuning.py's generator):
it beats or equals the untuned recipe, resumes from its journal, records failed trials
with their reason; plots are written even when they cannot be drawn."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import optuna
import pytest

from cxrdet.config import TuneEnsembleParams
from cxrdet.ensemble import EnsembleRecipe, Gating
from cxrdet.tuning.ensemble import score_recipe, tune_ensemble, write_study_plots

BENCH = Path(__file__).resolve().parents[1] / "bench" / "tuning.py"
_spec = importlib.util.spec_from_file_location("bench_tuning", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TUNE = TuneEnsembleParams.model_validate({"trials": 8, "study": {"seed": 3, "startup_trials": 4}})
# Deliberately poor: small boxes, a high gate and cut.
POOR = EnsembleRecipe(shrink=0.75, gating=Gating("product", {"threshold": 0.45}), score_threshold=0.5, max_boxes=1)


@pytest.fixture(scope="module")
def data():
    return bench.synthetic_data(60, folds=3, views=("original", "hflip", "scale1.2"), seed=1)


def test_study_improves_on_the_untuned_recipe_and_resumes(data, tmp_path):
    journal = tmp_path / "ensemble.journal"
    first = tune_ensemble(data, POOR, TUNE, journal)
    untuned = score_recipe(data, POOR)
    summary = first.summary
    assert summary["untuned"]["rsna_score"] == pytest.approx(untuned)
    assert summary["rsna_score"] >= untuned and summary["source"] == "tune_ensemble"
    assert summary["rsna_score"] == pytest.approx(score_recipe(data, first.recipe))  # the recipe written is the one scored
    assert summary["trials"]["complete"] == TUNE.trials
    assert first.study.trials[0].user_attrs["configured"]  # the untuned recipe was trial 0
    again = tune_ensemble(data, POOR, TUNE, journal)
    assert len(again.study.trials) == len(first.study.trials)  # resumed: nothing left to run
    assert again.recipe == first.recipe


def test_failed_trial_is_recorded_with_its_reason(data, tmp_path):
    nothing = POOR.with_changes(gating=Gating("none", {}), score_threshold=1.0)  # no vote reaches 1
    tune = TuneEnsembleParams.model_validate(TUNE.model_dump() | {"search": {"score_threshold": {"low": 0.0, "high": 1.0}}})
    result = tune_ensemble(data, nothing, tune, tmp_path / "ensemble.journal")
    trial0 = result.study.trials[0]
    assert trial0.state == optuna.trial.TrialState.FAIL
    assert "no box left" in trial0.user_attrs["fail_reason"]
    assert result.summary["failed"][0] == {"trial": 0, "reason": trial0.user_attrs["fail_reason"]}
    assert "no box left" in result.summary["untuned"]["error"]
    counts = result.summary["trials"]
    assert counts["fail"] >= 1 and counts["complete"] >= 1 and counts["complete"] + counts["fail"] == TUNE.trials  # went on
    assert result.summary["source"] == "tune_ensemble"


def test_plots_are_written_for_an_empty_study(tmp_path):
    pngs = {kind: tmp_path / f"{kind}.png" for kind in ("history", "importances", "parallel")}
    write_study_plots(optuna.create_study(), tmp_path / "study.html", pngs)
    assert all(path.stat().st_size > 0 for path in pngs.values())
    assert "<html>" in (tmp_path / "study.html").read_text()
