"""`cxrdet stage-times`: how long each stage of the last `dvc repro` took.

    cxrdet stage-times --since 1764160000 [--wall 412]

Reads the stages' MLflow runs started at or after --since (epoch seconds); `make demo`
passes the time it started and, as --wall, the seconds `dvc repro` took. The times are the
stages' own (process start-up excluded); with --wall, the wall time's ratio to their sum.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stage-times",
        help="time of each stage run since a moment (from MLflow)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--since", required=True, type=float, help="epoch seconds")
    parser.add_argument(
        "--wall", type=float, help="the whole run's wall seconds: also print its ratio to the sum"
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (params.yaml)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cxrdet.config import load_params
    from cxrdet.tracking.timings import format_timings, stage_timings

    params = load_params(args.root / "params.yaml")
    timings = stage_timings(
        args.root.resolve(),
        params.tracking.experiment,
        int(args.since * 1000),
        params.tracking.tracking_uri,
    )
    print(format_timings(timings, args.wall))
    return 0
