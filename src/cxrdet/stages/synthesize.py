"""DVC stage `synthesize`: the demo data, written in the real RSNA/VinBigData/NIH/folder formats."""

from __future__ import annotations

from pathlib import Path

import mlflow

from cxrdet.config import load_params
from cxrdet.data.sources.synthetic import DemoSpec, synthesize
from cxrdet.tracking.runs import log_numeric, stage_run


def run(root: Path) -> None:
    """The stage's flow in the project at `root` (the script parses arguments and calls this)."""
    params = load_params(root / "params.yaml")
    settings = params.synthesize.model_dump()
    out_dir = root / settings.pop("out_dir")
    with stage_run(
        "synthesize",
        root=root,
        experiment=params.tracking.experiment,
        params={"synthesize": params.synthesize.model_dump()},
        tracking_uri=params.tracking.tracking_uri,
    ):
        written = synthesize(out_dir, DemoSpec(**settings))
        log_numeric(
            {
                fmt: {"n_images": len(t.images), "n_boxes": len(t.boxes)}
                for fmt, t in written.items()
            }
        )
        mlflow.log_artifact(str(out_dir / "samples.png"))
    print(f"synthetic demo data -> {out_dir}")
