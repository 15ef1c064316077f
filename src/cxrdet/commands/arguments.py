"""What the subcommands' parsers share: how a documented subcommand is added, and the
submission formats."""

from __future__ import annotations

import argparse
from collections.abc import Callable

FORMATS = ("rsna", "vinbigdata", "folder")  # submission layouts (cxrdet.submission)


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    help: str,
    doc: str | None,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its module docstring `doc` as written; `run` runs it."""
    parser = subparsers.add_parser(
        name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.set_defaults(run=run)
    return parser
