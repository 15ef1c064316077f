"""DVC stage `register`: the evaluated ensemble into the MLflow model registry.

Logs the ensemble (every fold model, or with detector_final.enabled the final detectors
with the fold classifiers; the tuned recipe, the preprocessing) as one MLflow
pyfunc model from code (cxrdet.serving), loads it back and checks that its predictions on
`register.check_images` holdout images equal the evaluate stage's submission, then
registers a new version of `register.model_name` (e.g. cxrdet-rsna) tagged with its holdout
metrics, holdout/data/params hashes and git commit, aliased `challenger`. Alias `champion`
moves to it only when its holdout metric beats the champion's by `register.min_delta` on
the same holdout (cxrdet.tracking.registry.gate); the reason is logged either way.
Writes results/register/register.json (the version, its metric and the gate's decision; the
run and git commit are on the version in MLflow).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from cxrdet.config import Params, load_params
from cxrdet.data.datasets import Prepared, read_prepared
from cxrdet.data.folds import HOLDOUT, fold_ids
from cxrdet.errors import CxrdetError
from cxrdet.formats import metric_name
from cxrdet.infer.predictor import PredictorSpec, project_spec, save_bundle
from cxrdet.io import write_json
from cxrdet.paths import EVALUATE, FOLDS, PREPARED_DETECT, REGISTER, resolve
from cxrdet.serving.check import box_difference, comparable, output_boxes, submission_boxes
from cxrdet.serving.inputs import ID, IMAGE, frame_of, png_example
from cxrdet.serving.package import log_ensemble
from cxrdet.tracking import registry
from cxrdet.tracking.runs import git_commit, log_numeric, stage_run


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    prepared = read_prepared(root / PREPARED_DETECT)
    split = pd.read_parquet(root / FOLDS)
    holdout = sorted(map(str, fold_ids(split, HOLDOUT)))
    if not holdout:
        raise CxrdetError(
            "data/split/folds.parquet has no holdout images: nothing was evaluated to register"
        )
    metrics_file = root / EVALUATE / "metrics.json"
    if not metrics_file.is_file():
        raise CxrdetError(f"{metrics_file}: not found; run `dvc repro evaluate` first")
    metrics = json.loads(metrics_file.read_text())
    fmt = prepared.info["format"]
    # The champion is judged by the metric tune_ensemble maximised (evaluate records it).
    metric, name = metrics.get("metric", metric_name(fmt)), params.register.name_for(fmt)
    identity = identity_tags(root, params, prepared, holdout)
    spec = project_spec(root)
    paths = raw_paths(root, params, prepared, holdout)
    with stage_run(
        "register",
        root=root,
        experiment=params.tracking.experiment,
        params={"register": params.register.model_dump(), "model_name": name},
        tags={"cxrdet.dataset": "detect", **identity},
        tracking_uri=params.tracking.tracking_uri,
    ):
        log_numeric(
            {key: value for key, value in metrics.items() if key != "ablation"}, prefix="holdout."
        )
        with tempfile.TemporaryDirectory(prefix="cxrdet-bundle-") as scratch:
            bundle = save_bundle(spec, root, Path(scratch) / "bundle")
            example = pd.DataFrame(
                {
                    ID: [holdout[0]],
                    IMAGE: [png_example(paths[0], spec.preprocess, params.register.example_size)],
                }
            )
            model = log_ensemble(bundle, example, f"{name}-ensemble")
        check_against_evaluate(
            root, model.model_uri, spec, fmt, holdout[: params.register.check_images], paths
        )
        version = registry.register_version(
            name, model.model_uri, registry.version_tags(metrics, metric, identity)
        )
        decision = registry.promote(name, version.version, params.register.min_delta)
        registry.describe_version(name, version.version, decision)
        champion = registry.champion(name)
        mlflow.set_tags(
            {
                "cxrdet.model_name": name,
                "cxrdet.model_version": version.version,
                "cxrdet.promoted": str(decision.promote).lower(),
                registry.GATE_TAG: decision.reason,
            }
        )
        record = {
            "model_name": name,
            "version": int(version.version),
            "model_uri": f"models:/{name}/{version.version}",
            "metric": metric,
            "score": metrics.get(metric),
            "promoted": decision.promote,
            "reason": decision.reason,
            "champion": None if champion is None else int(champion.version),
            # Run ids and the git commit stay in MLflow: this DVC output is the same bytes
            # wherever the same code and data are reproduced (the committed dvc.lock holds).
            "tags": {k: v for k, v in identity.items() if k not in GIT_TAGS},
        }
    write_json(record, root / REGISTER)
    print(
        f"{name} version {version.version} ({metric} {metrics.get(metric)}) is challenger; "
        f"{'now champion' if decision.promote else 'not promoted'}: {decision.reason} -> {REGISTER}"
    )


GIT_TAGS = ("cxrdet.git_commit", "cxrdet.git_dirty")


def raw_paths(root: Path, params: Params, prepared: Prepared, image_ids: list[str]) -> list[Path]:
    raw_dir = resolve(params.data.detect.raw_dir, root)
    return [raw_dir / path for path in prepared.images.set_index("image_id").loc[image_ids, "path"]]


def identity_tags(
    root: Path, params: Params, prepared: Prepared, holdout: list[str]
) -> dict[str, str]:
    """What the version was built and scored on. The holdout hash covers the data and the
    holdout's image ids: the gate compares metrics only between equal holdout hashes."""
    data_hash = prepared.info["data_hash"]
    commit, dirty = git_commit(root)
    params_text = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return {
        "cxrdet.data_hash": data_hash,
        registry.HOLDOUT_TAG: _digest(data_hash + "\n" + "\n".join(holdout)),
        "cxrdet.params_hash": _digest(params_text),
        "cxrdet.git_commit": commit,
        "cxrdet.git_dirty": str(dirty).lower(),
        "cxrdet.format": prepared.info["format"],
        "cxrdet.detectors": "final"
        if params.detector_final.enabled
        else "folds",  # train_detector_final's or the folds'
    }


def check_against_evaluate(
    root: Path,
    model_uri: str,
    spec: PredictorSpec,
    fmt: str,
    image_ids: list[str],
    paths: list[Path],
) -> None:
    """The logged model, loaded back, must predict the first holdout images (sent as base64
    file bytes, as a client would) exactly as the evaluate stage did."""
    if not image_ids:
        return
    output = mlflow.pyfunc.load_model(model_uri).predict(
        frame_of(image_ids, paths[: len(image_ids)])
    )
    expected = submission_boxes(
        root / EVALUATE / "submission.csv", fmt, spec.class_names, image_ids
    )
    difference = box_difference(comparable(output_boxes(output), fmt, image_ids), expected)
    if difference is not None:
        raise CxrdetError(
            f"the logged model {model_uri} disagrees with {Path(EVALUATE) / 'submission.csv'} "
            f"on {difference}; "
            "rerun `dvc repro evaluate` (its outputs may be stale) before registering"
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
