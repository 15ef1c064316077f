"""Serving latency: one image per request through the MLflow scoring server against the same
model called in process, p50 and p95.

    python bench/serving.py [--quick] [--json OUT] [--model models:/cxrdet-rsna@champion]

The model: --model (a registered or logged ensemble), or by default the MLflow pyfunc model
the register stage logs, built from params.yaml's architecture (every fold classifier and
detector, their TTA views, the recipe) with untrained weights: a forward pass costs the
same whatever the weights, and the recipe is run without gate or cut so every box goes
through fusion. The request: a synthetic RSNA DICOM (1024 px like the real ones; --quick
256 px and fewer requests), base64 in the `image` column, as a client sends it. The server
is `mlflow models serve --env-manager local` with one worker; the baseline is the loaded
model's `predict` on the same table, so the ratio is what HTTP, JSON and the server add.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from cxrdet.config import Params, validate_params
from cxrdet.data.sources.synthetic import DemoSpec, synthesize
from cxrdet.ensemble import EnsembleRecipe
from cxrdet.infer.predictor import PredictorSpec, save_bundle
from cxrdet.models.classifier import build_classifier, save_classifier
from cxrdet.models.retinanet import build_retinanet, decode_config, save_detector
from cxrdet.serving.inputs import frame_of, png_example
from cxrdet.serving.package import save_ensemble
from cxrdet.serving.server import invoke, model_server
from cxrdet.train.classifier import OPACITY_CLASSES

from common import Report, Row, arguments, descendants_peak_rss_mb, emit, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
RSNA_LABELS = [
    "Normal",
    "No Lung Opacity / Not Normal",
    "Lung Opacity",
]  # what the demo's prepare writes
BOX_CLASSES = ["Lung Opacity"]


def flowing_params(raw: dict) -> Params:
    """params with the recipe's gate and cut off and every raw box kept: untrained models
    score near zero, and without this the fusion and output work would be skipped."""
    raw = yaml.safe_load(yaml.safe_dump(raw))
    raw["ensemble"] |= {"score_threshold": 0.0}
    raw["ensemble"]["gating"]["rule"] = "none"
    raw["detector"]["decode"] |= {"score_floor": 0.0}
    return validate_params(raw)


def untrained_bundle(params: Params, out: Path, seed: int = 0) -> Path:
    """A predictor directory (cxrdet.infer.predictor.save_bundle) of params' fold classifiers
    and detectors with seeded random weights, for RSNA-layout data (the demo's classes)."""
    torch.manual_seed(seed)
    source = out.with_name(out.name + "-source")
    heads = {"label": (RSNA_LABELS, [2]), "opacity": (OPACITY_CLASSES, [1]), "none": ([], [])}
    classifiers, detectors = [], []
    for fold in params.classifier.folds:
        for variant in params.classifier.variants:
            names, positive = heads[variant.target]
            relative = f"models/classifier/fold{fold}/{variant.name}.pt"
            config = {
                "backbone": variant.backbone,
                "num_classes": len(names),
                "drop_rate": 0.0,
                "variant": variant.name,
                "fold": fold,
                "target": variant.target,
                "image_size": variant.image_size,
                "class_names": names,
                "positive": positive,
            }
            save_classifier(
                source / relative, build_classifier(variant.backbone, len(names)), config
            )
            classifiers.append(relative)
    detector = params.detector
    image_classes, positive = heads[detector.global_head]
    for fold in detector.folds:
        relative = f"models/detector/fold{fold}/model.pt"
        config = {
            "fold": fold,
            "name": detector.name,
            "image_size": detector.image_size,
            "class_names": BOX_CLASSES,
            "image_class_names": image_classes,
            "positive": positive,
            "decode": asdict(decode_config(detector)),
        }
        save_detector(
            source / relative,
            build_retinanet(detector, len(BOX_CLASSES), len(image_classes)),
            config,
        )
        detectors.append(relative)
    prepare = params.prepare
    spec = PredictorSpec(
        preprocess={
            "size": prepare.image_size,
            "low_percentile": prepare.low_percentile,
            "high_percentile": prepare.high_percentile,
        },
        fmt="rsna",
        class_names=BOX_CLASSES,
        classifier_tta=params.classifier.tta.model_dump(),
        detector_tta={
            "hflip": detector.tta.hflip,
            "scales": list(detector.tta.scales),
            "batch_size": detector.tta.batch_size,
        },
        recipe=EnsembleRecipe.from_params(params.ensemble.model_dump()).to_dict(),
        classifiers=classifiers,
        detectors=detectors,
        source={"source": "untrained"},
    )
    return save_bundle(spec, source, out)


def demo_dicom(folder: Path, size: int) -> Path:
    """One synthetic RSNA DICOM of `size` pixels (the smallest demo draw of every format)."""
    synthesize(
        folder,
        DemoSpec(
            seed=3,
            image_size=size,
            rsna_images=1,
            vinbigdata_images=1,
            nih_images=1,
            folder_images=1,
        ),
        progress=False,
    )
    return next((folder / "rsna").rglob("*.dcm"))


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    return float(np.percentile(seconds, 50)) * 1000, float(np.percentile(seconds, 95)) * 1000


def main() -> None:
    parser = arguments(__doc__, quick_help="a 256 px image, 5 requests each")
    parser.add_argument(
        "--model", help="a model URI to serve instead of the untrained params.yaml ensemble"
    )
    args = parser.parse_args()
    size, requests = (256, 5) if args.quick else (1024, 30)
    import mlflow

    with tempfile.TemporaryDirectory(prefix="cxrdet-bench-serving-") as scratch:
        work = Path(scratch)
        dicom = demo_dicom(work / "demo", size)
        frame = frame_of(["bench"], [dicom])
        uri = args.model
        if uri is None:
            params = flowing_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
            bundle = untrained_bundle(params, work / "bundle")
            preprocess = {
                "low_percentile": params.prepare.low_percentile,
                "high_percentile": params.prepare.high_percentile,
            }
            example = pd.DataFrame(
                {"image_id": ["example"], "image": [png_example(dicom, preprocess, 64)]}
            )
            uri = str(save_ensemble(bundle, example, work / "model"))
        model = mlflow.pyfunc.load_model(uri)
        local, served = [], []
        with model_server(uri) as url:
            model.predict(frame)  # warm-up both: lazy imports, first allocations
            invoke(url, frame)
            for _ in range(requests):  # interleaved, so both see the same load on a shared machine
                start = time.perf_counter()
                model.predict(frame)
                local.append(time.perf_counter() - start)
                start = time.perf_counter()
                status, body = invoke(url, frame)
                served.append(time.perf_counter() - start)
                if status != 200:
                    sys.exit(f"the server answered {status}: {body}")
            server_rss = descendants_peak_rss_mb()  # the server's worker holds the model
        in_process_rss = peak_rss_mb()  # this process: the loaded model and its predictions
    rows = [
        Row(
            f"{name} latency, 1 image",
            server,
            in_process,
            "ms",
            ratio=server / in_process,
            target="~1.0x",
            ours_rss_mb=server_rss,
            baseline_rss_mb=in_process_rss,
        )
        for name, server, in_process in zip(("p50", "p95"), percentiles(served), percentiles(local))
    ]
    context = (
        f"one {size} px DICOM per request "
        f"({frame['image'].str.len().iloc[0] / 1e6:.2f} MB base64), {requests} requests; "
        f"model {args.model or 'untrained params.yaml ensemble'}; "
        f"{torch.get_num_threads()} CPU threads"
    )
    emit(
        Report(
            "serving",
            context,
            rows,
            [
                "ours = through `mlflow models serve --env-manager local` (1 worker), "
                "baseline = the same model's predict in process; ratio = ours / baseline "
                "(what HTTP, JSON and the server add; 1.0 = nothing)"
            ],
        ),
        args.json,
    )


if __name__ == "__main__":
    main()
