"""`cxrdet predict`: a competition submission for a folder of images, by the ensemble.

    cxrdet predict --model models:/cxrdet-rsna@champion --input stage_2_test_images/ \\
        --format rsna --out sub.csv
    cxrdet predict --run-dir . --input stage_2_test_images/ --format rsna --out submission.csv
    cxrdet predict --engine spark --model models:/cxrdet-rsna@champion --input images/ --out sub.csv

--engine spark: the same submission from a Spark job, the model as an MLflow Spark UDF (see
cxrdet.serving.spark: a folder or a table of image paths, spark-submit, clusters).

--model / --run-dir: a registered model (models:/<name>@<alias> or models:/<name>/<version>,
from the project's MLflow store or MLFLOW_TRACKING_URI; an alias is resolved to its version
first), any MLflow model URI or directory, a project after `dvc repro` (its fold models, or
with detector_final.enabled its final detectors and fold classifiers;
results/tuning/ensemble.json and the prepared cache settings) or a model directory holding
predictor.json. Every DICOM, PNG or JPEG under --input is one image; its id is its file name
without extension (RSNA: the patientId). Images are decoded and windowed as `prepare` cached
the training images.

--on-bad-files skip: an unreadable or blank image does not stop the run; the others are
predicted and written, the rejected ones listed with their reasons in <out>.rejected.csv
next to the submission (prepare's rejected.csv columns), and the exit code is 2 when more
than --max-rejected-fraction of the images were rejected (default raise: the first stops it).

Nothing finished is lost when a run is killed: every --checkpoint-every images, the finished
chunk is stored in <out>.chunks/ next to the submission, and the same command run again
resumes there, predicting only the chunks not stored. The submission is written once every
chunk is done, then the folder is removed. Chunks of another model, input folder (a file
added, removed or changed), --checkpoint-every, --chunk or device are refused, never mixed
in: rerun as the folder was started, or remove it to start over (cxrdet.infer.checkpoints).
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
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=256,
        help="--engine local: images per chunk stored in <out>.chunks/, where a rerun resumes; "
        "chunks of another model, input or options are refused (remove the folder to start over)",
    )
    parser.add_argument(
        "--on-bad-files",
        choices=("raise", "skip"),
        default="raise",
        help="skip: predict the readable images, list the others in <out>.rejected.csv",
    )
    parser.add_argument(
        "--max-rejected-fraction",
        type=float,
        default=0.05,
        help="--on-bad-files skip: exit 2 when more images than this fraction are rejected",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_engine_arguments(parser)  # --engine spark: cxrdet.serving.spark


def run(args: argparse.Namespace) -> int:
    import math
    import os
    import sys

    from tqdm.auto import tqdm

    from cxrdet.data.prepare import check_rejected_fraction, rejected_table
    from cxrdet.errors import CxrdetError
    from cxrdet.formats import output_format
    from cxrdet.infer.checkpoints import Checkpoints, identity, predict_checkpointed
    from cxrdet.infer.predictor import find_images
    from cxrdet.io import write_csv
    from cxrdet.paths import project_root
    from cxrdet.serving.load import load_predictor
    from cxrdet.tracking.store import OFFLINE_ENV

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    for option, value in (("--chunk", args.chunk), ("--checkpoint-every", args.checkpoint_every)):
        if value < 1:
            raise CxrdetError(f"{option} must be a positive integer, got {value}")
    if args.engine == "spark":
        from cxrdet.serving.spark import predict_on_spark

        if args.on_bad_files != "raise":
            raise CxrdetError("--on-bad-files skip applies to --engine local only")

        return predict_on_spark(args)
    found = list(find_images(args.input))
    if not found:
        raise CxrdetError(f"{args.input}: no .dcm, .dicom, .png, .jpg or .jpeg images found")
    image_ids, paths = [i for i, _ in found], [p for _, p in found]
    predictor, loaded = load_predictor(args.model, project_root(), device=args.device)
    print(f"model: {loaded}", file=sys.stderr)
    fmt = args.format or predictor.spec.fmt
    rejected: list[tuple[str, Path, str]] | None = [] if args.on_bad_files == "skip" else None
    listing = rejected_path(args.out)
    checkpoints = Checkpoints(
        chunks_path(args.out),
        identity(predictor, image_ids, paths, args.checkpoint_every, args.chunk),
    )
    if resumed := checkpoints.done():
        total = math.ceil(len(paths) / args.checkpoint_every)
        print(
            f"resuming: {resumed} of {total} chunks done in {checkpoints.directory}",
            file=sys.stderr,
        )
    try:
        with tqdm(total=len(paths), desc="predict", unit="img", disable=not args.progress) as bar:
            boxes = predict_checkpointed(
                predictor,
                paths,
                image_ids,
                checkpoints,
                args.checkpoint_every,
                args.chunk,
                bar.update,
                rejected,
            )
    finally:  # even when nothing could be read: the list says why
        if rejected is not None:
            write_csv(rejected_table(rejected), listing)
    skipped = {image_id for image_id, _, _ in rejected or []}
    kept = [image_id for image_id in image_ids if image_id not in skipped]
    output_format(fmt).write_submission(boxes, args.out, predictor.spec.class_names, kept)
    checkpoints.remove()  # only once the submission is in place (written atomically)
    print(f"{len(kept)} images, {len(boxes)} boxes -> {args.out} ({fmt})", file=sys.stderr)
    if rejected is not None:
        print(f"{len(rejected)} images rejected -> {listing}", file=sys.stderr)
        check_rejected_fraction(
            len(rejected),
            len(image_ids),
            args.max_rejected_fraction,
            "--max-rejected-fraction",
            args.input,
            listing,
        )
    return 0


def rejected_path(out: Path) -> Path:
    """<out>.rejected.csv next to the submission: the images --on-bad-files skip left out."""
    return out.with_name(f"{out.stem}.rejected.csv")


def chunks_path(out: Path) -> Path:
    """<out>.chunks/ next to the submission: the finished chunks of a run not yet complete."""
    return out.with_name(f"{out.stem}.chunks")
