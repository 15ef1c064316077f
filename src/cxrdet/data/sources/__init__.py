"""One module per on-disk dataset format, each producing the canonical tables.

Every source is `load(raw_dir, *, on_bad_rows="raise", **options) -> SourceTables`:
image paths relative to raw_dir, sizes from the image headers, unreadable or missing
image files listed in `rejected` (not raised), malformed CSV rows raised as
AnnotationError (file, line) or, with on_bad_rows="drop", dropped and listed in `dropped`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrdet.data.sources import folder, nih, rsna, vinbigdata
from cxrdet.data.sources._csv import OnBadRows, check_on_bad_rows
from cxrdet.data.tables import SourceTables

SOURCES: dict[str, Callable[..., SourceTables]] = {
    "rsna": rsna.load,
    "vinbigdata": vinbigdata.load,
    "nih": nih.load,
    "folder": folder.load,
}


def load_source(
    fmt: str, raw_dir: Path, *, on_bad_rows: OnBadRows = "raise", **options: Any
) -> SourceTables:
    """Read `raw_dir` in format `fmt` (one of SOURCES) into the canonical tables."""
    if fmt not in SOURCES:
        raise ValueError(f"unknown dataset format {fmt!r}; allowed: {', '.join(SOURCES)}")
    check_on_bad_rows(on_bad_rows)
    load = SOURCES[fmt]
    accepted = [
        name
        for name, parameter in inspect.signature(load).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "on_bad_rows"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"format {fmt!r} has no option(s) {unknown}; its options: {accepted or 'none'}"
        )
    return load(Path(raw_dir), on_bad_rows=on_bad_rows, **options)
