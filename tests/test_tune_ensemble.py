"""A tiny ensemble study on synthetic cached predictions (bench/tuning.py's generator):
it beats or equals the untuned recipe, resumes from its journal, records failed trials
with their reason; plots are written even when they cannot be drawn."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from cxrdet.config import TuneEnsembleParams, validate_params
from cxrdet.ensemble import EnsembleRecipe, Gating, apply_recipe
from cxrdet.errors import ConfigError
from cxrdet.evaluation import Holdout
from cxrdet.formats import competition_score
from cxrdet.metrics import mean_average_precision, rsna_score
from cxrdet.tuning.ensemble import score_recipe, tune_ensemble
from cxrdet.tuning.study_plots import PLOTLY_JS, write_study_plots

BENCH = Path(__file__).resolve().parents[1] / "bench" / "tuning.py"
_spec = importlib.util.spec_from_file_location("bench_tuning", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TUNE = TuneEnsembleParams.model_validate({"trials": 8, "study": {"seed": 3, "startup_trials": 4}})
# Deliberately poor: small boxes, a high gate and cut.
POOR = EnsembleRecipe(
    shrink=0.75, gating=Gating("product", {"threshold": 0.45}), score_threshold=0.5, max_boxes=1
)


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
    assert summary["rsna_score"] == pytest.approx(
        score_recipe(data, first.recipe)
    )  # the recipe written is the one scored
    assert summary["trials"]["complete"] == TUNE.trials
    assert first.study.trials[0].user_attrs["configured"]  # the untuned recipe was trial 0
    again = tune_ensemble(data, POOR, TUNE, journal)
    assert len(again.study.trials) == len(first.study.trials)  # resumed: nothing left to run
    assert again.recipe == first.recipe


def test_failed_trial_is_recorded_with_its_reason(data, tmp_path):
    nothing = POOR.with_changes(gating=Gating("none", {}), score_threshold=1.0)  # no vote reaches 1
    tune = TuneEnsembleParams.model_validate(
        TUNE.model_dump() | {"search": {"score_threshold": {"low": 0.0, "high": 1.0}}}
    )
    result = tune_ensemble(data, nothing, tune, tmp_path / "ensemble.journal")
    trial0 = result.study.trials[0]
    assert trial0.state == optuna.trial.TrialState.FAIL
    assert "no box left" in trial0.user_attrs["fail_reason"]
    assert result.summary["failed"][0] == {"trial": 0, "reason": trial0.user_attrs["fail_reason"]}
    assert "no box left" in result.summary["untuned"]["error"]
    counts = result.summary["trials"]
    assert (
        counts["fail"] >= 1
        and counts["complete"] >= 1
        and counts["complete"] + counts["fail"] == TUNE.trials
    )  # went on
    assert result.summary["source"] == "tune_ensemble"


def test_plots_are_written_for_an_empty_study(tmp_path):
    pngs = {kind: tmp_path / f"{kind}.png" for kind in ("history", "importances", "parallel")}
    write_study_plots(optuna.create_study(), tmp_path / "study.html", pngs)
    assert all(path.stat().st_size > 0 for path in pngs.values())
    page = (tmp_path / "study.html").read_text()
    assert "<html>" in page and f"src='{PLOTLY_JS}'" in page and len(page) < 100_000
    assert (tmp_path / PLOTLY_JS).stat().st_size > 1_000_000  # plotly.js once, beside the page


# ---------------------------------------------------------------- tune_ensemble.objective

# Two images, two classes: every truth box found, plus one false box on image a that scores below
# a's true one. mAP@0.4: 1.0 (the false box ranks last in its class); RSNA: a 1/2, b 1 -> 0.75.
TRUTH = pd.DataFrame(
    {
        "image_id": ["a", "b"],
        "x": [10.0, 200.0],
        "y": [10.0, 200.0],
        "w": [100.0, 50.0],
        "h": [100.0, 50.0],
        "class_id": [0, 1],
    }
)
BOXES = pd.DataFrame(
    {
        "image_id": ["a", "a", "b"],
        "x": [10.0, 300.0, 200.0],
        "y": [10.0, 300.0, 200.0],
        "w": [100.0, 50.0, 50.0],
        "h": [100.0, 50.0, 50.0],
        "score": [0.9, 0.3, 0.6],
        "class_id": [0, 0, 1],
    }
)


def test_objective_picks_the_metric_on_a_folder_prediction_table():
    assert competition_score("folder", TRUTH, BOXES, ["a", "b"]) == pytest.approx(
        1.0
    )  # auto: mAP@0.4
    assert competition_score("folder", TRUTH, BOXES, ["a", "b"], "map") == pytest.approx(1.0)
    assert competition_score("folder", TRUTH, BOXES, ["a", "b"], "rsna") == pytest.approx(0.75)
    assert competition_score("rsna", TRUTH, BOXES, ["a", "b"]) == pytest.approx(
        0.75
    )  # auto on RSNA data
    assert competition_score("rsna", TRUTH, BOXES, ["a", "b"], "map") == pytest.approx(1.0)


@pytest.fixture(scope="module")
def folder_data(data):
    """The synthetic predictions as a user's own (folder-format) dataset."""
    return replace(data, fmt="folder")


def test_objective_map_scores_the_map_of_the_recipe(folder_data):
    final = apply_recipe(folder_data.predictions, POOR, folder_data.class_names).boxes
    expected_map = mean_average_precision(
        folder_data.truth, final, image_ids=folder_data.image_ids
    ).score
    expected_rsna = rsna_score(folder_data.truth, final).score
    assert expected_map != pytest.approx(expected_rsna)
    assert score_recipe(folder_data, POOR) == pytest.approx(expected_map)  # auto on folder data
    assert score_recipe(folder_data, POOR, "map") == pytest.approx(expected_map)
    assert score_recipe(folder_data, POOR, "rsna") == pytest.approx(expected_rsna)


def test_lower_score_cut_never_lowers_map(folder_data):
    """Why objective map keeps the score thresholds at their low end instead of searching them."""
    recipe = POOR.with_changes(gating=Gating("product", {"threshold": 0.0}), max_boxes=8)
    cuts = [0.6, 0.4, 0.2, 0.1, 0.0]
    maps = [
        score_recipe(folder_data, recipe.with_changes(score_threshold=cut), "map") for cut in cuts
    ]
    assert maps == sorted(maps) and maps[-1] > maps[0]
    rsna = [
        score_recipe(folder_data, recipe.with_changes(score_threshold=cut), "rsna") for cut in cuts
    ]
    assert rsna != sorted(rsna)  # the RSNA score pays for extra boxes: there the cut is searched


def _tuned(data, objective: str, journal: Path):
    tune = TuneEnsembleParams.model_validate(
        TUNE.model_dump() | {"trials": 6, "objective": objective}
    )
    return tune, tune_ensemble(data, POOR, tune, journal)


def test_objective_rsna_searches_max_boxes_and_the_score_threshold(folder_data, tmp_path):
    tune, result = _tuned(folder_data, "rsna", tmp_path / "ensemble.journal")
    assert result.summary["objective"] == "rsna" and result.summary["metric"] == "rsna_score"
    assert result.summary["unsearched"] == {}
    assert result.summary["rsna_score"] == pytest.approx(
        score_recipe(folder_data, result.recipe, "rsna")
    )
    completed = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == tune.trials
    for trial in completed:
        assert {"score_threshold", "max_boxes"} <= set(trial.params)
        if trial.params["gating"] in ("product", "sqrt"):
            assert f"gating.{trial.params['gating']}.threshold" in trial.params
    assert len({t.params["score_threshold"] for t in completed}) > 1


def test_objective_map_keeps_the_score_cuts_low_and_searches_max_boxes(folder_data, tmp_path):
    tune, result = _tuned(folder_data, "auto", tmp_path / "ensemble.journal")
    low, gate_low = tune.search.score_threshold.low, tune.search.gate_threshold.low
    assert result.summary["objective"] == "map" and result.summary["metric"] == "map40"
    assert result.summary["unsearched"] == {"score_threshold": low, "gate_threshold": gate_low}
    assert result.summary["map40"] == pytest.approx(score_recipe(folder_data, result.recipe, "map"))
    assert result.summary["untuned"]["map40"] == pytest.approx(
        score_recipe(folder_data, POOR, "map")
    )
    completed = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert completed and all("max_boxes" in t.params for t in completed)
    assert not any(name.endswith("threshold") for t in completed for name in t.params)
    for trial in completed:
        recipe = EnsembleRecipe.from_dict(trial.user_attrs["recipe"])
        assert recipe.score_threshold == low
        assert recipe.gating.params.get("threshold", gate_low) == gate_low
    assert result.recipe.score_threshold == low  # POOR's cut (0.5) was not kept


def test_the_objective_names_a_new_study(folder_data, tmp_path):
    journal = tmp_path / "ensemble.journal"
    assert (
        _tuned(folder_data, "map", journal)[1].summary["study"]
        != _tuned(folder_data, "rsna", journal)[1].summary["study"]
    )


def test_evaluate_reports_map_and_rsna_on_folder_data_the_objective_first(folder_data):
    holdout = Holdout(
        folder_data.predictions,
        folder_data.truth,
        folder_data.image_ids,
        "folder",
        folder_data.class_names,
        objective="rsna",
    )
    final = holdout.final(POOR)
    metrics = holdout.metrics(final)
    assert list(metrics) == ["rsna_score", "map40"]
    assert metrics["rsna_score"] == pytest.approx(rsna_score(folder_data.truth, final).score)
    assert metrics["map40"] == pytest.approx(mean_average_precision(folder_data.truth, final).score)
    assert holdout.score(final) == pytest.approx(
        metrics["rsna_score"]
    )  # ablation and curves: the tuned metric
    assert list(replace(holdout, objective="auto").metrics(final)) == ["map40", "rsna_score"]
    vinbigdata = replace(holdout, fmt="vinbigdata", objective="auto")
    assert list(vinbigdata.metrics(final)) == ["map40"]


def test_a_bad_objective_names_the_key():
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["tune_ensemble"]["objective"] = "f1"
    with pytest.raises(ConfigError, match=r"tune_ensemble\.objective"):
        validate_params(raw)
