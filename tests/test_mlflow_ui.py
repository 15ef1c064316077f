"""What a user sees in the MLflow UI: the experiment opens on its runs table."""

from __future__ import annotations

import shutil

import mlflow
import optuna
import pytest
import yaml
from mlflow import MlflowClient

from cxrdet.cli import main
from cxrdet.tracking.names import metric_key
from cxrdet.tracking.runs import RUN_NAME_CHARS, nested_run_name
from cxrdet.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, configure, ensure_experiment
from cxrdet.tuning.study import log_best_trial, run_trials


def test_the_experiment_is_declared_model_training_also_in_an_older_store(tmp_path):
    configure(tmp_path)
    client = MlflowClient()
    experiment_id = ensure_experiment("fresh", tmp_path)
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    older = client.create_experiment("older")  # made before the project set the tag
    assert ensure_experiment("older", tmp_path) == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_ui_prints_the_runs_table_url(tmp_path, capsys, project_root):
    shutil.copy(project_root / "params.yaml", tmp_path)
    assert main(["ui", "--print-url", "--port", "5123", "--root", str(tmp_path)]) == 0
    experiment = MlflowClient().get_experiment_by_name("cxrdet")
    runs = f"http://127.0.0.1:5123/#/experiments/{experiment.experiment_id}/runs"
    expected = f"{runs}?workflowType=machine_learning"
    assert capsys.readouterr().out.strip() == f"runs table: {expected}"


@pytest.mark.parametrize(
    ("logged", "column"),
    [
        ("holdout_rsna_score", "holdout.rsna_score"),  # a fold stage's holdout score ...
        ("holdout.rsna_score", "holdout.rsna_score"),  # ... is evaluate's column
        ("train_loss", "train.loss"),
        ("best_val_rsna", "best.val.rsna"),
        (
            "test_resnet.val_auc.No Lung Opacity / Not Normal",
            "test_resnet.val.auc.No_Lung_Opacity_Not_Normal",
        ),
        ("n_oof", "n_oof"),
    ],
)
def test_one_metric_naming_scheme(logged, column):
    assert metric_key(logged) == column


def test_nested_run_names_are_short_and_tell_models_apart():
    names = [
        nested_run_name(model, suffix)
        for model, suffix in [
            ("inception_resnet_v2_256", "f3"),
            ("inception_resnet_v2_320", "f3"),
            ("demo_opacity", "f0"),
            ("retinanet", "final"),
        ]
    ]
    assert all(len(name) <= RUN_NAME_CHARS for name in names) and len(set(names)) == len(names)
    assert names[2:] == ["demo_opacity f0", "retinanet final"]


def test_a_study_run_names_its_trials_and_its_best_trial(tmp_path, monkeypatch):
    configure(tmp_path)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0.0, 1.0)

    experiment_id = ensure_experiment("study", tmp_path)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)  # nested runs too, as stage_run does
    with mlflow.start_run(experiment_id=experiment_id) as parent:
        run_trials(study, objective, 3, label="ens-trial")
        log_best_trial(study.best_trial)
    runs = mlflow.search_runs(experiment_names=["study"], output_format="list")
    assert {run.info.run_name for run in runs} >= {"ens-trial-0", "ens-trial-1", "ens-trial-2"}
    logged = mlflow.get_run(parent.info.run_id).data
    assert logged.metrics["best.trial.number"] == study.best_trial.number
    assert logged.metrics["best.trial.value"] == pytest.approx(study.best_value)
    assert logged.params["best.trial.x"] == str(study.best_params["x"])


def test_dvc_plots_are_images_so_plots_show_needs_no_cdn(project_root):
    """`dvc plots show` loads vega from a CDN for data plots (CSV, JSON); the project runs
    offline, so its DVC plots are the PNGs its stages draw."""
    stages = yaml.safe_load((project_root / "dvc.yaml").read_text())["stages"]
    plots = [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in stages.values()
        for entry in stage.get("do", stage).get("plots", [])
    ]
    assert plots and all(path.endswith(".png") for path in plots), plots
