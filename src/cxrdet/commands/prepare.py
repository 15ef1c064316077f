"""`cxrdet prepare`: the prepare stage on any folder, outside DVC."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("rsna", "vinbigdata", "nih", "folder")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="raw dataset -> canonical tables + uint8 image cache + rejected list",
        description="Read a raw dataset, write images/boxes/targets parquet tables, a resized "
        "PNG cache, rejected.csv (unreadable files and dropped rows, with reasons), "
        "stats.json and samples.png into --out-dir.",
    )
    parser.add_argument("--source", required=True, choices=FORMATS, help="on-disk format")
    parser.add_argument("--raw-dir", required=True, type=Path)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--image-size", type=int, default=256, help="cache side in pixels")
    parser.add_argument("--workers", type=int, default=0, help="0 = one per CPU core")
    parser.add_argument("--on-bad-rows", choices=("raise", "drop"), default="raise")
    parser.add_argument(
        "--fuse-readers", action="store_true", help="VinBigData: WBF the readers' boxes"
    )
    parser.add_argument("--max-rejected-fraction", type=float, default=0.05)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cxrdet.data.prepare import PrepareOptions, prepare_dataset

    options = PrepareOptions(
        image_size=args.image_size,
        workers=args.workers,
        on_bad_rows=args.on_bad_rows,
        fuse_readers=args.fuse_readers,
        max_rejected_fraction=args.max_rejected_fraction,
    )
    prepared = prepare_dataset(args.source, args.raw_dir, args.out_dir, options)
    stats = prepared.stats
    print(
        f"{stats['n_images']} images, {stats['n_boxes']} boxes, {stats['n_rejected']} rejected "
        f"-> {prepared.out_dir}"
    )
    return 0
