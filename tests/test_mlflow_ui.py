"""What a user sees in the MLflow UI: the experiment opens on its runs table."""

from __future__ import annotations

import shutil

from mlflow import MlflowClient

from cxrdet.cli import main
from cxrdet.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, configure, ensure_experiment


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
    expected = f"http://127.0.0.1:5123/#/experiments/{experiment.experiment_id}/runs"
    assert capsys.readouterr().out.strip() == f"runs table: {expected}"
