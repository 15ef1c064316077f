"""DVC stage `synthesize`: the demo data, written in the real RSNA/VinBigData/NIH/folder formats."""

from __future__ import annotations

import mlflow

from cxrdet.config import load_params
from cxrdet.data.sources.synthetic import DemoSpec, synthesize
from cxrdet.errors import exit_code_of
from cxrdet.paths import project_root
from cxrdet.tracking.runs import stage_run


def main() -> None:
    root = project_root()
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
        mlflow.log_metrics({f"{fmt}.n_images": len(t.images) for fmt, t in written.items()})
        mlflow.log_metrics({f"{fmt}.n_boxes": len(t.boxes) for fmt, t in written.items()})
        mlflow.log_artifact(str(out_dir / "samples.png"))
    print(f"synthetic demo data -> {out_dir}")


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "synthesize"))
