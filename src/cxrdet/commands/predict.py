"""`cxrdet predict`: a competition submission for a folder of images, by the ensemble.

    cxrdet predict --model models:/cxrdet-rsna@champion --input stage_2_test_images/ --format rsna --out sub.csv
    cxrdet predict --run-dir . --input stage_2_test_images/ --format rsna --out submission.csv
    cxrdet predict --engine spark --model models:/cxrdet-rsna@champion --input images/ --out sub.csv

--engine spark: the same submission from a Spark job, the model as an MLflow Spark UDF (see
cxrdet.serving.spark: a folder or a table of image paths, spark-submit, clusters).

--model / --run-dir: a registered model (models:/<name>@<alias> or models:/<name>/<version>,
from the project's MLflow store or MLFLOW_TRACKING_URI; an alias is resolved to its version
first), any MLflow model URI or directory, a project after `dvc repro` (its fold models, or
with detector_final.enabled its final detectors and fold classifiers; results/tuning/ensemble.json and the prepared cache settings) or a model directory holding
predictor.json. Every DICOM, PNG or JPEG under --input is one image; its id is its file name
without extension (RSNA: the patientId). Images are decoded and windowed as `prepare`
cached the training images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrdet.commands.arguments import FORMATS, add_command
from cxrdet.serving.spark import add_arguments as add_engine_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "predict",
        "write a submission for a folder of images with the ensemble",
        __doc__,
        run,
    )
    parser.add_argument(
        "--model",
        "--run-dir",
        dest="model",
        default=".",
        help="models:/<name>@<alias>, an MLflow model, a project root after `dvc repro`, "
        "or a model directory (predictor.json)",
    )
    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        help="folder of DICOM/PNG/JPEG images (searched recursively)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, help="submission layout (default: the training data's format)"
    )
    parser.add_argument("--out", required=True, type=Path, help="submission CSV to write")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--chunk", type=int, default=64, help="images decoded and predicted together (memory bound)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_engine_arguments(parser)  # --engine spark: cxrdet.serving.spark


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from tqdm.auto import tqdm

    from cxrdet.errors import CxrdetError
    from cxrdet.formats import output_format
    from cxrdet.infer.predictor import find_images
    from cxrdet.paths import project_root
    from cxrdet.serving.load import load_predictor
    from cxrdet.tracking.store import OFFLINE_ENV

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if args.chunk < 1:
        raise CxrdetError(f"--chunk must be a positive integer, got {args.chunk}")
    if args.engine == "spark":
        from cxrdet.serving.spark import predict_on_spark

        return predict_on_spark(args)
    found = list(find_images(args.input))
    if not found:
        raise CxrdetError(f"{args.input}: no .dcm, .dicom, .png, .jpg or .jpeg images found")
    image_ids, paths = [i for i, _ in found], [p for _, p in found]
    predictor, loaded = load_predictor(args.model, project_root(), device=args.device)
    print(f"model: {loaded}", file=sys.stderr)
    fmt = args.format or predictor.spec.fmt
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not args.progress) as bar:
        result = predictor.predict(paths, image_ids, chunk=args.chunk, progress=bar.update)
    boxes = result.boxes
    output_format(fmt).write_submission(boxes, args.out, predictor.spec.class_names, image_ids)
    print(f"{len(image_ids)} images, {len(boxes)} boxes -> {args.out} ({fmt})", file=sys.stderr)
    return 0
