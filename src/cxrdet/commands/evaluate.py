"""`cxrdet evaluate`: score a submission file against a truth file.

    cxrdet evaluate --format rsna --truth stage_2_train_labels.csv --submission sub.csv
    cxrdet evaluate --format vinbigdata --truth train.csv --submission sub.csv --json

rsna: the RSNA score (official definition, or the public kernel's matching with
--variant kernel). vinbigdata: mAP@0.4 with the class-14 rule; the readers' boxes are
fused as `prepare` does unless --no-fuse-readers. folder: VOC mAP@0.4 per class of an
annotations.csv (with images.csv beside it, when present, listing negatives).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrdet.commands.arguments import FORMATS, add_command

if TYPE_CHECKING:
    from cxrdet.metrics import MapResult

# Readers' boxes are fused at IoU 0.4, as the winners built their labels (REFERENCE.md).
FUSE_IOU = 0.4


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "evaluate", "score a submission file against a truth file", __doc__, run
    )
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--truth", required=True, type=Path, help="truth CSV in the format's layout"
    )
    parser.add_argument("--submission", required=True, type=Path, help="submission CSV")
    parser.add_argument(
        "--variant",
        choices=("official", "kernel"),
        help="RSNA matching: the official definition (default) or the public kernel port's",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a summary"
    )
    parser.add_argument(
        "--no-fuse-readers",
        dest="fuse_readers",
        action="store_false",
        help="vinbigdata: use every reader's box as given instead of fusing them",
    )


def run(args: argparse.Namespace) -> int:
    import json
    import warnings

    from cxrdet.errors import CxrdetError

    if args.variant is not None and args.format != "rsna":
        raise CxrdetError(f"--variant applies to --format rsna only, not {args.format}")
    evaluate = {"rsna": evaluate_rsna, "vinbigdata": evaluate_vinbigdata, "folder": evaluate_folder}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate[args.format](args)
    for warning in caught:
        print(f"cxrdet evaluate: warning: {warning.message}", file=sys.stderr)
    report = {
        "format": args.format,
        "truth": str(args.truth),
        "submission": str(args.submission),
        **report,
    }
    print(json.dumps(_json_safe(report)) if args.json else summary(report))
    return 0


def evaluate_rsna(args: argparse.Namespace) -> dict[str, Any]:
    from cxrdet.data.sources import rsna
    from cxrdet.metrics import rsna_score
    from cxrdet.submission import read_rsna_submission

    truth, image_ids = rsna.parse_labels_csv(args.truth)
    submission = read_rsna_submission(args.submission, truth_ids=image_ids)
    result = rsna_score(truth, submission.predictions, variant=args.variant or "official")
    return {
        "metric": f"RSNA score ({result.variant})",
        "variant": result.variant,
        "score": result.score,
        "n_images": result.n_images,
        "per_threshold": {f"{t:g}": value for t, value in result.per_threshold.items()},
    }


def evaluate_vinbigdata(args: argparse.Namespace) -> dict[str, Any]:
    from cxrdet.data.sources.vinbigdata import (
        CLASS_NAMES,
        NO_FINDING,
        fuse_reader_boxes,
        parse_train_csv,
    )
    from cxrdet.metrics import vinbigdata_score
    from cxrdet.submission import read_vinbigdata_submission

    labels = parse_train_csv(args.truth)
    boxes = labels.boxes
    if args.fuse_readers and len(boxes):
        # Only the truth file is at hand: the farthest box corner stands in for the image
        # size, which is all the fusion needs to normalise coordinates.
        corners = boxes.assign(width=boxes["x"] + boxes["w"], height=boxes["y"] + boxes["h"])
        sizes = corners.groupby("image_id", as_index=False)[["width", "height"]].max()
        boxes = fuse_reader_boxes(boxes, sizes, iou_thr=FUSE_IOU)
    submission = read_vinbigdata_submission(args.submission, truth_ids=labels.image_ids)
    result = vinbigdata_score(boxes, submission.predictions, image_ids=labels.image_ids)
    return _map_report(
        "VinBigData mAP@0.4", result, [*CLASS_NAMES, NO_FINDING], fused_readers=args.fuse_readers
    )


def evaluate_folder(args: argparse.Namespace) -> dict[str, Any]:
    from cxrdet.data.sources import folder
    from cxrdet.metrics import mean_average_precision
    from cxrdet.submission import read_folder_submission

    truth, image_ids, class_names = folder.parse_annotations_csv(args.truth)
    submission = read_folder_submission(args.submission, class_names, truth_ids=image_ids)
    result = mean_average_precision(truth, submission.predictions, image_ids=image_ids)
    return _map_report("mAP@0.4", result, class_names)


def _map_report(
    metric: str, result: MapResult, class_names: list[str], **extra: Any
) -> dict[str, Any]:
    per_class = [
        {"class_id": cls, "class_name": class_names[cls], "ap": ap, "n_truth": result.n_truth[cls]}
        for cls, ap in result.per_class.items()
    ]
    return {
        "metric": metric,
        "score": result.score,
        "n_images": result.n_images,
        **extra,
        "per_class": per_class,
    }


def summary(report: dict[str, Any]) -> str:
    lines = [f"{report['metric']}: {report['score']:.4f} over {report['n_images']} images"]
    match = ">" if report.get("variant") == "official" else ">="
    for t, value in report.get("per_threshold", {}).items():
        lines.append(f"  IoU {match} {t:<5} {value:.4f}")
    for row in report.get("per_class", []):
        name, ap, n = row["class_name"], row["ap"], row["n_truth"]
        lines.append(f"  {row['class_id']:>3} {name:<22} AP {ap:.4f}  ({n} truth boxes)")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN (no image to score) becomes null, which JSON can carry."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
