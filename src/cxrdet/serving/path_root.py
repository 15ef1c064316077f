"""Which server files the model's `path` input column may name: none unless the operator
gives a root directory, then only regular files below it.

A remote client of `mlflow models serve` must not make the server open its files: paths
are off by default. The operator allows them below one directory with the environment
variable CXRDET_SERVE_PATH_ROOT (or the model config key `path_root`, which Spark scoring
sets). A path is resolved (symlinks included, relative paths against the root, never the
server's working directory) and must end below the root at a regular file (a FIFO or a
device would block a server thread). Every refusal is the same message, so a client learns
nothing about files outside the root, not even whether they exist.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrdet.errors import CxrdetError

ENV = "CXRDET_SERVE_PATH_ROOT"
CONFIG_KEY = "path_root"
REFUSED = "no such file below the server's path root, or not allowed"
DISABLED = (
    f"file paths are disabled on this server (its operator can allow them below a root: {ENV})"
)


def configured_root(model_config: Mapping[str, Any] | None) -> Path | None:
    """The resolved root of the model config (`path_root`), else of ENV; None: paths off."""
    value = (model_config or {}).get(CONFIG_KEY) or os.environ.get(ENV)
    if not value:
        return None
    root = Path(value).resolve()
    if not root.is_dir():
        raise CxrdetError(f"{ENV} / model config {CONFIG_KEY}={value!r}: not a directory")
    return root


def confined_file(root: Path, value: str) -> Path | None:
    """The regular file `value` names below `root` (resolved), or None when it is anything
    else: missing, outside the root (also through a symlink), a directory, a FIFO."""
    try:
        resolved = (root / value).resolve(strict=True)  # an absolute `value` replaces root
        mode = os.stat(resolved).st_mode  # stat, not open: opening a FIFO would block
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        return None
    if not resolved.is_relative_to(root) or not stat.S_ISREG(mode):
        return None
    return resolved
