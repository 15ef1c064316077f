"""DVC stage `train_detector_final`: after cross-validation, every family of `detector.families`
trained once more on every non-holdout image (params' `detector_final`), the usual last step
when data are few. The fold models stay what tune_ensemble tunes on (their out-of-fold
predictions); evaluate, register and `cxrdet predict` use these final models instead of the
fold models (cxrdet.infer.predictor.project_spec): one model per family and image, so the
ensemble has no fold fusion (it only merges the families when there are several).

Same families, recipe and loop as train_detector@<fold> (cxrdet.train.detector.train_families),
with no validation split: no best epoch, the last epoch's weights are kept; a killed run
resumes from models/checkpoints/train_detector_final/<model>/last.pt. Epochs: per family
cxrdet.train.detector.final_epochs (detector_final.epochs; null: as its folds trained, from
results/detector/folds/fold<k>/metrics.json). Runs under `torchrun` as the fold stage does.

Writes models/detector/final/ (model.pt, two_stage.pt: the fold stage's model files, config
fold = FINAL_FOLD; final.json, the marker project_spec checks),
results/detector/final/holdout_{boxes,images}.parquet (the cxrdet.infer.detector_tta
contract, `fold` = FINAL_FOLD) and metrics.json. Disabled (detector_final.enabled false, the
demo's default; DVC cannot skip a stage): only the marker {"enabled": false}, empty tables
with the contract's columns and metrics.json {"enabled": false}, in seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd

from cxrdet.config import load_params
from cxrdet.data.datasets import read_prepared
from cxrdet.data.folds import HOLDOUT, fold_ids, training_ids
from cxrdet.ensemble.tables import KEY_COLUMNS
from cxrdet.families import family_settings
from cxrdet.infer.detector_tta import BOX_COLUMNS, FINAL_FOLD
from cxrdet.infer.predictor import FINAL_MARKER
from cxrdet.io import write_json, write_parquet
from cxrdet.models.backbone import backbone_source
from cxrdet.paths import (
    ANCHORS,
    CHECKPOINTS,
    DETECTOR_FINAL,
    DETECTOR_FINAL_MODELS,
    DETECTOR_FOLDS,
    FOLDS,
    PREPARED_DETECT,
    PRETRAINED,
)
from cxrdet.runtime.session import start_runtime, stop_runtime
from cxrdet.stages.training_runs import (
    detect_tags,
    log_detect_dataset,
    log_family_model,
    main_stage_run,
    model_run,
    read_tuned_anchors,
    step_logger,
)
from cxrdet.tracking.runs import log_history, log_numeric
from cxrdet.train.detector import detector_data, final_epochs, fold_best_epochs, train_families

STAGE = "train_detector_final"


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    if not params.detector_final.enabled:
        write_disabled(root)
        return
    detector = params.detector
    tuned = read_tuned_anchors(root)
    # Per family: its folds' best epochs (reported; with epochs null they may set the count).
    best = {
        family: fold_best_epochs(
            root / DETECTOR_FOLDS, detector.folds, family_settings(detector, family).name
        )
        for family in detector.families
    }
    epochs = {
        family: final_epochs(
            family_settings(detector, family).optim, best[family], params.detector_final.epochs
        )
        for family in detector.families
    }
    prepared = read_prepared(root / PREPARED_DETECT)
    split = pd.read_parquet(root / FOLDS)
    ids = {"train": training_ids(split, None), "holdout": fold_ids(split, HOLDOUT)}
    runtime = start_runtime(params.train)
    main_process = runtime.context.is_main
    tags = detect_tags(prepared, "final", detector.name)
    run = main_stage_run(
        main_process,
        STAGE,
        root,
        params,
        tags,
        {
            "detector": detector.model_dump(),
            "detector_final": params.detector_final.model_dump(),
            "train": params.train.model_dump(),
            "anchors": tuned,
            "epochs": epochs,
            "world_size": runtime.context.world_size,
        },
    )
    checkpoints = root / CHECKPOINTS / STAGE
    models, results = root / DETECTOR_FINAL_MODELS, root / DETECTOR_FINAL
    try:
        with run as active:
            log_detect_dataset(main_process, prepared, root)
            data = detector_data(prepared, detector)
            weights = backbone_source(detector, root / PRETRAINED, params.pretrain.allow_download)
            tables: list[tuple[pd.DataFrame, pd.DataFrame]] = []
            scores: dict[str, dict[str, float]] = {}
            trained = train_families(
                detector,
                data,
                prepared,
                ids,
                runtime,
                fold=FINAL_FOLD,
                validate=None,
                predict=["holdout"],
                model_dir=models,
                checkpoint_dir=checkpoints,
                weights=weights,
                tuned_anchors=tuned,
                tuned_key=ANCHORS,
                epochs=epochs,
                family_run=lambda settings: model_run(
                    main_process, STAGE, settings.name, "final", tags
                ),
                log=step_logger(main_process),
                desc="final",
            )
            for done in trained:  # the main process only, each inside its family's nested run
                tables.append(done.tables["holdout"])
                history = done.result.history
                scores[done.settings.name] = {
                    "epochs": done.result.epochs,
                    "fold_best_epochs": best[done.settings.family],
                    "last_train_loss": history[-1]["train_loss"] if history else float("nan"),
                    "file": done.settings.model_file,
                }
                log_numeric(
                    {key: scores[done.settings.name][key] for key in ("epochs", "last_train_loss")}
                )
                log_history(history, done.settings.name, active.info.run_id)
                log_family_model(
                    f"{done.settings.name}-final",
                    done.settings.family,
                    models / done.settings.model_file,
                    f"{done.settings.name}, trained on every non-holdout image",
                    {**tags, "stage": STAGE, **scores[done.settings.name]},
                    {"family": done.settings.family, "epochs": done.result.epochs},
                    tags,
                    active.info.run_id,
                )
                print(
                    f"final {done.settings.name}: {done.result.epochs} epochs on "
                    f"{len(ids['train'])} images (folds' best epochs {best[done.settings.family]}) "
                    f"-> {models / done.settings.model_file}"
                )
            if main_process:
                write_parquet(
                    pd.concat([boxes for boxes, _ in tables], ignore_index=True),
                    results / "holdout_boxes.parquet",
                )
                write_parquet(
                    pd.concat([images for _, images in tables], ignore_index=True),
                    results / "holdout_images.parquet",
                )
                metrics = {
                    "enabled": True,
                    "fold": FINAL_FOLD,
                    "models": scores,
                    "n_train": len(ids["train"]),
                    "n_holdout": len(ids["holdout"]),
                }
                write_json(metrics, results / "metrics.json")
                write_json(metrics, models / FINAL_MARKER)
                mlflow.log_artifact(str(results / "metrics.json"))
                keep_only(models, {FINAL_MARKER, *(entry["file"] for entry in scores.values())})
                shutil.rmtree(checkpoints, ignore_errors=True)  # only a killed run resumes
                print(f"final: {', '.join(scores)} -> {models}, {results}")
    finally:
        stop_runtime()


def write_disabled(root: Path) -> None:
    """The outputs of a disabled stage: the marker, empty tables with the contract's columns."""
    disabled = {"enabled": False}
    write_parquet(
        pd.DataFrame(columns=BOX_COLUMNS), root / DETECTOR_FINAL / "holdout_boxes.parquet"
    )
    write_parquet(
        pd.DataFrame(columns=KEY_COLUMNS), root / DETECTOR_FINAL / "holdout_images.parquet"
    )
    write_json(disabled, root / DETECTOR_FINAL / "metrics.json")
    write_json(disabled, root / DETECTOR_FINAL_MODELS / FINAL_MARKER)
    keep_only(root / DETECTOR_FINAL_MODELS, {FINAL_MARKER})
    print(
        "detector_final.enabled is false: evaluate, register and predict use the fold "
        f"detectors -> {root / DETECTOR_FINAL_MODELS}"
    )


def keep_only(directory: Path, names: set[str]) -> None:
    """Remove what an earlier run left in `directory` (e.g. a family no longer trained)."""
    for path in directory.iterdir():
        if path.name not in names:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
