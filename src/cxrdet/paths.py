"""Where the project lives: every stage resolves paths against the project root."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_MARKERS = ("dvc.yaml", "params.yaml")


def project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: cwd) holding dvc.yaml or params.yaml.

    CXRDET_ROOT overrides the search, for tools run from elsewhere.
    """
    if override := os.environ.get("CXRDET_ROOT"):
        return Path(override).resolve()
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if any((directory / marker).exists() for marker in ROOT_MARKERS):
            return directory
    return here


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """`path` as given when absolute, else relative to the project root."""
    path = Path(path)
    return path if path.is_absolute() else (root or project_root()) / path
