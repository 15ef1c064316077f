"""Atomic file writes: write a sibling `.partial` file, then rename it into place.

A stage killed mid-write never leaves a half-written output that a later run could
mistake for a finished one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pandas as pd

from cxrdet.errors import OutputWriteError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces `path` only if the block succeeds.
    A failed write (disk full, unwritable folder) raises OutputWriteError naming `path`."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        os.replace(partial, path)
    except OSError as error:
        raise OutputWriteError(path, error.strerror or str(error)) from error
    finally:
        with suppress(OSError):
            partial.unlink(missing_ok=True)


def write_parquet(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as partial:
        table.to_parquet(partial, index=False)


def write_json(content: Any, path: str | Path) -> None:
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(content, indent=2) + "\n")


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as partial:
        table.to_csv(partial, index=False)
