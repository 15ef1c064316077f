"""The MLflow store location: absolute, and shared with DVC's experiment copies."""

from __future__ import annotations

from pathlib import Path

from cxrdet.tracking.store import artifact_root, default_tracking_uri, store_root


def test_the_store_is_the_projects_even_from_a_queued_experiment_copy(tmp_path):
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    assert store_root(project) == project.resolve()
    assert store_root(copy) == project.resolve()
    assert default_tracking_uri(copy) == f"sqlite:///{project.resolve()}/mlruns/mlflow.db"
    assert artifact_root(copy) == project.resolve() / "mlruns" / "artifacts"


def test_a_folder_merely_named_like_dvc_parts_is_its_own_store(tmp_path):
    project = tmp_path / "exps" / "tmp" / "project"
    assert store_root(project) == project.resolve()
    assert default_tracking_uri(Path(project)).endswith("/exps/tmp/project/mlruns/mlflow.db")
