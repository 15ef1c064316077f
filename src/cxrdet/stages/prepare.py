"""DVC stage `prepare@<dataset>`: raw dataset -> canonical tables + image cache."""

from __future__ import annotations

from pathlib import Path

import mlflow

from cxrdet.config import load_params
from cxrdet.data.prepare import PrepareOptions, prepare_dataset
from cxrdet.errors import ConfigError
from cxrdet.paths import PREPARED
from cxrdet.tracking.runs import log_numeric, stage_run


def run(root: Path, name: str) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    dataset = getattr(params.data, name, None)
    if dataset is None:
        raise ConfigError(f"data.{name}: not in params.yaml, nothing to prepare")
    options = PrepareOptions(
        image_size=params.prepare.image_size,
        workers=params.prepare.workers,
        low_percentile=params.prepare.low_percentile,
        high_percentile=params.prepare.high_percentile,
        max_rejected_fraction=params.prepare.max_rejected_fraction,
        on_bad_rows=dataset.on_bad_rows,
        fuse_readers=dataset.fuse_readers,
        fuse_iou=dataset.fuse_iou,
        sample_grid=params.prepare.sample_grid,
        seed=params.split.seed,
    )
    with stage_run(
        "prepare",
        root=root,
        experiment=params.tracking.experiment,
        params={"data": dataset.model_dump(), "prepare": params.prepare.model_dump()},
        tags={"cxrdet.dataset": name},
        run_name=f"prepare@{name}",
        tracking_uri=params.tracking.tracking_uri,
    ):
        prepared = prepare_dataset(
            dataset.format,
            root / dataset.raw_dir,
            root / PREPARED / name,
            options,
            raw_dir_name=str(dataset.raw_dir),
        )
        mlflow.set_tag("cxrdet.data_hash", prepared.info["data_hash"])
        log_numeric(prepared.stats)
        for artifact in ("dataset.json", "stats.json", "rejected.csv", "samples.png"):
            if (prepared.out_dir / artifact).exists():
                mlflow.log_artifact(str(prepared.out_dir / artifact))
    print(f"prepared {prepared.stats['n_images']} images -> {prepared.out_dir}")
