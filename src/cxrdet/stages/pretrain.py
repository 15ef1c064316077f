"""DVC stage `pretrain`: a backbone for every backbone of `classifier.variants` (and the
detector's, with detector.weights: pretrain).

pretrain.source nih: train it on data.pretrain (15 sigmoid outputs); file: import a
weights file (strict key check); imagenet: timm's ImageNet weights (a download); none:
seeded random weights (training from scratch). Only nih reads data/prepared/pretrain.
Writes models/pretrained/<backbone>.pt and results/pretrain/metrics.json (per-label AUCs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow

from cxrdet.config import load_params
from cxrdet.data.datasets import read_prepared
from cxrdet.io import write_json
from cxrdet.models.backbone import check_timm_name, create_backbone, save_backbone
from cxrdet.paths import CHECKPOINTS, PREPARED_PRETRAIN, PRETRAIN_METRICS, PRETRAINED
from cxrdet.runtime.seed import seed_everything
from cxrdet.runtime.session import start_runtime, stop_runtime
from cxrdet.stages.training_runs import main_stage_run
from cxrdet.tracking.inputs import log_dataset
from cxrdet.tracking.runs import log_numeric
from cxrdet.train.classifier import pretrain_backbone, pretrain_summary


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    pretrain = params.pretrain
    keys = params.pretrained_backbones()  # errors name the params key of each backbone
    for backbone, key in keys.items():
        check_timm_name(backbone, key)
    runtime = start_runtime(params.train)
    main_process = runtime.context.is_main
    prepared = read_prepared(root / PREPARED_PRETRAIN) if pretrain.source == "nih" else None
    tags = {"cxrdet.source": pretrain.source}
    if prepared is not None:
        tags |= {"cxrdet.dataset": "pretrain", "cxrdet.data_hash": prepared.info["data_hash"]}
    run = main_stage_run(
        main_process,
        "pretrain",
        root,
        params,
        tags,
        {
            "pretrain": pretrain.model_dump(),
            "train": params.train.model_dump(),
            "backbones": sorted(keys),
        },
    )
    metrics: dict = {"source": pretrain.source}
    try:
        with run:
            if main_process and prepared is not None:
                log_dataset(
                    prepared.images,
                    name="pretrain",
                    data_hash=prepared.info["data_hash"],
                    source=root / PREPARED_PRETRAIN,
                )
            for backbone in sorted(keys):
                origin: dict = {"source": pretrain.source}
                if prepared is not None:
                    log = (
                        (lambda values, step, name=backbone: log_numeric(values, f"{name}.", step))
                        if main_process
                        else None
                    )
                    model, result = pretrain_backbone(
                        backbone,
                        prepared,
                        pretrain,
                        runtime,
                        root / CHECKPOINTS / "pretrain" / backbone,
                        keys[backbone],
                        log,
                    )
                    body, metrics[backbone] = model.backbone, pretrain_summary(result)
                    origin |= {
                        "data_hash": prepared.info["data_hash"],
                        "image_size": pretrain.image_size,
                    }
                elif pretrain.source == "file":
                    origin["file"] = pretrain.weights[backbone]
                    body = create_backbone(
                        backbone,
                        pretrained_path=root / origin["file"],
                        param_key=f"pretrain.weights.{backbone}",
                    )
                elif pretrain.source == "none":  # from scratch: seeded random weights
                    origin["seed"] = pretrain.optim.seed
                    seed_everything(pretrain.optim.seed)
                    body = create_backbone(backbone, param_key=keys[backbone])
                else:
                    body = create_backbone(
                        backbone,
                        imagenet=True,
                        allow_download=pretrain.allow_download,
                        param_key="pretrain.allow_download",
                    )
                if main_process:
                    save_backbone(root / PRETRAINED / f"{backbone}.pt", body, backbone, **origin)
            if main_process:
                write_json(metrics, root / PRETRAIN_METRICS)
                # The best epoch's validation AUCs, named like the epochs logged them
                # (`test_resnet.best.val.mean_auc` beside `test_resnet.val.mean_auc`).
                log_numeric(
                    {
                        name: {
                            "best_epoch": summary["best_epoch"],
                            "best_val_mean_auc": summary["mean_auc"],
                            "best_val_auc": summary["auc"],
                        }
                        for name, summary in metrics.items()
                        if isinstance(summary, dict)
                    }
                )
                mlflow.log_artifact(str(root / PRETRAIN_METRICS))
                # Checkpoints only serve to resume a killed run; a finished stage starts afresh.
                shutil.rmtree(root / CHECKPOINTS / "pretrain", ignore_errors=True)
    finally:
        stop_runtime()
    if main_process:
        print(f"pretrain ({pretrain.source}): {', '.join(sorted(keys))} -> models/pretrained/")
