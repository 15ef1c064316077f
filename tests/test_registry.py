"""The model registry on the project's sqlite store: a registered version becomes
`challenger`; `champion` moves only when the holdout metric beats the champion's by
min_delta on the same holdout; manual promotion has the same checks unless forced;
rollback walks the champion history back; `cxrdet registry` lists, promotes, rolls back.

The registry logic does not depend on what the model computes: a constant pyfunc model
(from code) stands in for the ensemble here; test_registry_load.py uses the ensemble."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from cxrdet.cli import main as cxrdet_main
from cxrdet.errors import CxrdetError
from cxrdet.tracking import registry
from cxrdet.tracking.store import configure, ensure_experiment

ROOT = Path(__file__).resolve().parents[1]
CONSTANT_MODEL = """
import mlflow
import pandas as pd


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return model_input


mlflow.models.set_model(Constant())
"""
HOLDOUT = {registry.HOLDOUT_TAG: "holdout-a", "cxrdet.data_hash": "data-a"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project root with params.yaml and its sqlite store; (root, a logged model's URI)."""
    root = tmp_path_factory.mktemp("registry")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = configure(root)
    assert uri == f"sqlite:///{root.resolve()}/mlruns/mlflow.db"
    code = root / "constant_model.py"
    code.write_text(CONSTANT_MODEL)
    with mlflow.start_run(experiment_id=ensure_experiment("registry-test", root)):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), pip_requirements=["mlflow"]
        )
    return root, info.model_uri


def register(
    store: tuple[Path, str],
    name: str,
    score: float | None,
    holdout: dict[str, str] = HOLDOUT,
    min_delta: float = 0.01,
) -> tuple[str, registry.Decision]:
    """What the register stage does: a version, its gate decision recorded."""
    metrics = {"rsna_score": score, "auc": 0.9, "n_images": 18}
    version = registry.register_version(
        name, store[1], registry.version_tags(metrics, "rsna_score", holdout)
    )
    decision = registry.gate(name, version.version, min_delta)
    registry.describe_version(name, version.version, decision)
    registry.decide(name, version.version, decision)
    return str(version.version), decision


def aliases(name: str) -> dict[str, str]:
    return {
        alias: str(v) for alias, v in registry.client().get_registered_model(name).aliases.items()
    }


def test_second_version_is_challenger_and_champion_moves_only_when_better(store):
    name = "cxrdet-moves"
    first, decision = register(store, name, 0.30)
    assert decision.promote and aliases(name) == {"champion": first, "challenger": first}
    second, decision = register(store, name, 0.305)  # gains 0.005 < min_delta 0.01
    assert not decision.promote and "does not beat champion version 1" in decision.reason
    assert aliases(name) == {"champion": first, "challenger": second}
    assert (
        "not promoted" in registry.client().get_model_version(name, second).tags[registry.GATE_TAG]
    )
    third, decision = register(store, name, 0.35)
    assert decision.promote and aliases(name) == {"champion": third, "challenger": third}
    assert registry.champion_history(name) == [first, third]

    assert registry.rollback(name) == (third, first)
    assert aliases(name)["champion"] == first
    with pytest.raises(CxrdetError, match="nothing to roll back to"):
        registry.rollback(name)


def test_versions_describe_their_metric_against_the_champion_and_what_changed(store):
    name = "cxrdet-described"
    first, _ = register(store, name, 0.30)
    second, _ = register(store, name, 0.40, holdout={**HOLDOUT, "cxrdet.params_hash": "params-b"})
    described = registry.client().get_model_version(name, first).description
    assert "Holdout rsna_score 0.3000" in described and "first champion" in described
    assert "data-a" in described and "nothing (the first version)" in described
    described = registry.client().get_model_version(name, second).description
    assert "beats champion version 1's 0.3000" in described
    assert "Changed since the previous version: params (against version 1)" in described
    model = registry.client().get_registered_model(name).description
    assert "champion: version 2" in model and "challenger: version 2" in model
    registry.rollback(name)
    assert "champion: version 1" in registry.client().get_registered_model(name).description


def test_gate_refuses_another_holdout_or_a_missing_score_and_force_overrides(store):
    name = "cxrdet-gate"
    first, _ = register(store, name, 0.30)
    other, decision = register(
        store, name, 0.90, holdout={registry.HOLDOUT_TAG: "holdout-b", "cxrdet.data_hash": "data-b"}
    )
    assert not decision.promote and "another holdout" in decision.reason
    unscored, decision = register(store, name, None)
    assert not decision.promote and "has no holdout rsna_score" in decision.reason
    assert registry.promote(name, other, 0.01).promote is False  # manual promotion: same checks
    assert aliases(name)["champion"] == first
    assert registry.promote(name, other, 0.01, force=True).reason == "forced by the user"
    assert aliases(name)["champion"] == other
    assert registry.rollback(name) == (other, first)
    with pytest.raises(CxrdetError, match="has no version 99"):
        registry.promote(name, "99", 0.01)


def test_alias_uris_resolve_to_the_version_they_point_to(store):
    name = "cxrdet-resolve"
    first, _ = register(store, name, 0.2)
    assert registry.resolve(f"models:/{name}@champion") == (
        f"models:/{name}/{first}",
        f"models:/{name}@champion -> version {first}",
    )
    assert registry.resolve("runs:/abc/model") == ("runs:/abc/model", None)
    with pytest.raises(CxrdetError, match="has no alias 'staging'"):
        registry.resolve(f"models:/{name}@staging")
    with pytest.raises(CxrdetError, match="no registered model 'nope'"):
        registry.resolve("models:/nope@champion")


def test_registry_cli_lists_promotes_and_rolls_back(store, monkeypatch, capsys):
    root, _ = store
    monkeypatch.setenv("CXRDET_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = "cxrdet-rsna"  # params' register.model_name for the demo's rsna data
    first, _ = register(store, name, 0.30)
    second, _ = register(store, name, 0.301)
    capsys.readouterr()

    assert cxrdet_main(["registry", "list"]) == 0
    listing = capsys.readouterr().out
    assert (
        listing.startswith(f"{name}: 2 versions") and "champion" in listing and "0.3010" in listing
    )
    assert cxrdet_main(["registry", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["versions"]
    assert [(r["version"], r["aliases"], r["score"]) for r in rows] == [
        (2, ["challenger"], 0.301),
        (1, ["champion"], 0.30),
    ]
    assert rows[0]["tags"][registry.HOLDOUT_TAG] == "holdout-a" and rows[0]["metrics"]["auc"] == 0.9

    assert cxrdet_main(["registry", "promote", "--version", second]) == 1  # gains 0.001 < min_delta
    assert "champion unchanged" in capsys.readouterr().out
    assert cxrdet_main(["registry", "promote", "--version", second, "--min-delta", "0.0005"]) == 0
    assert aliases(name)["champion"] == second
    assert cxrdet_main(["registry", "rollback"]) == 0
    assert f"champion version {second} -> {first}" in capsys.readouterr().out
    assert cxrdet_main(["registry", "list", "--name", "missing-model"]) == 2
    assert "no registered model 'missing-model'" in capsys.readouterr().err
    for bad in ("abc", "0", "-1", "1.5"):
        with pytest.raises(SystemExit) as exited:
            cxrdet_main(["registry", "promote", "--version", bad])
        assert exited.value.code == 2
        assert f"argument --version: {bad!r} is not a version number" in capsys.readouterr().err


RACING_PROMOTE = """
import sys, time
from cxrdet.tracking import registry

read = registry.champion_history


def slow(name):  # widen the read-modify-write window of the history tag: a race loses entries
    history = read(name)
    time.sleep(1.0)
    return history


registry.champion_history = slow
from cxrdet.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_parallel_promotions_lose_no_history_entry_and_rollback_is_true(store, tmp_path):
    root, _ = store
    name = "race"
    first, _ = register(store, name, 0.30)
    racers = [register(store, name, 0.10)[0] for _ in range(4)]  # not better: challengers only
    script = tmp_path / "racing_promote.py"
    script.write_text(RACING_PROMOTE)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"CXRDET_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), "registry", "promote", "--name", name]
            + ["--version", version, "--force"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in racers
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    history = registry.champion_history(name)
    assert history[0] == first and sorted(history[1:]) == sorted(racers)  # no entry lost
    assert aliases(name)["champion"] == history[-1]  # the last writer is the last entry
    assert registry.rollback(name) == (history[-1], history[-2])
    assert aliases(name)["champion"] == history[-2]
