"""The `cxrdet` console script: one subcommand per module in cxrdet.commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from cxrdet.errors import exit_code_of

# Each module exposes `register(subparsers)`, which adds its parser and sets `run`.
# Heavy imports (torch, mlflow) happen inside `run`, so `cxrdet --help` stays fast.
COMMAND_MODULES = [
    "cxrdet.commands.prepare",
    "cxrdet.commands.evaluate",
    "cxrdet.commands.predict",
    "cxrdet.commands.profile",
    "cxrdet.commands.registry",
    "cxrdet.commands.serve",
    "cxrdet.commands.stage_times",
    "cxrdet.commands.ui",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrdet", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code_of(lambda: args.run(args), f"cxrdet {args.command}")


if __name__ == "__main__":
    sys.exit(main())
