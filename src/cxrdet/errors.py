"""Exception types. Every error names the file (and row or key) it is about."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class CxrdetError(Exception):
    """Base class of the errors cxrdet raises on bad input."""


class ConfigError(CxrdetError):
    """A params file has an unknown key, a wrong type or an out-of-range value."""


class ImageReadError(CxrdetError):
    """An image file (DICOM, PNG, JPEG) cannot be decoded into one 2-D image."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DicomReadError(ImageReadError):
    """A DICOM file is not DICOM, is truncated, has no pixel data or is multi-frame."""


class OutputWriteError(CxrdetError):
    """An output cannot be written (disk full, read-only or missing directory); the file
    it would have replaced is left as it was."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: cannot write: {reason}")


class AnnotationError(CxrdetError):
    """A row of an annotation or submission file is malformed.

    `row` is the 1-based line number in the file (the header is line 1), or None when the
    problem concerns the whole file.
    """

    def __init__(self, path: str | Path, row: int | None, problem: str) -> None:
        self.path = Path(path)
        self.row = row
        self.problem = problem
        where = f"{self.path}, line {row}" if row is not None else f"{self.path}"
        super().__init__(f"{where}: {problem}")


def exit_code_of(main: Callable[[], int | None], program: str) -> int:
    """Run `main`; bad input becomes one clear line on stderr and exit code 2, no traceback."""
    try:
        return int(main() or 0)
    except CxrdetError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
