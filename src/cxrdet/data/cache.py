"""The resized uint8 image cache that training reads instead of decoding DICOM each epoch.

Every image becomes `<cache_dir>/<image_id>.png`: square, `size` pixels a side, 8-bit
grayscale. The scale factors to map boxes between original and cached pixels are
returned per image; boxes stay in original pixels on disk (see DESIGN.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from cxrdet.data.images import read_image
from cxrdet.errors import ImageReadError
from cxrdet.io import atomic_path
from cxrdet.runtime.pool import worker_pool

SETTINGS_FILE = "cache_settings.json"


@dataclass(frozen=True)
class CacheSettings:
    size: int
    low_percentile: float
    high_percentile: float


@dataclass(frozen=True)
class CacheTask:
    image_id: str
    source_path: str
    cache_path: str


@dataclass(frozen=True)
class CacheResult:
    image_id: str
    error: str | None  # None when cached


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA averages when shrinking, so thin structures (ribs, small lesions) survive.
    interpolation = cv2.INTER_AREA if max(image.shape) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def cache_one(task: CacheTask, settings: CacheSettings) -> CacheResult:
    try:
        image = read_image(
            task.source_path,
            low_percentile=settings.low_percentile,
            high_percentile=settings.high_percentile,
        )
    except ImageReadError as error:
        return CacheResult(task.image_id, error.reason)
    resized = resize_square(image, settings.size)
    write_png_atomic(Path(task.cache_path), resized)
    return CacheResult(task.image_id, None)


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write then rename, so a killed run never leaves a half-written image behind."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    with atomic_path(path) as partial:
        partial.write_bytes(encoded.tobytes())


def read_cached(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(path, "cached image missing or unreadable; re-run prepare")
    return image


def prepare_cache_dir(cache_dir: Path, settings: CacheSettings) -> None:
    """Reuse the cache when built with the same settings (resume), else start it afresh."""
    settings_path = cache_dir / SETTINGS_FILE
    if cache_dir.exists():
        same = settings_path.exists() and json.loads(settings_path.read_text()) == asdict(settings)
        if not same:
            for stale in cache_dir.glob("*.png"):
                stale.unlink()
    cache_dir.mkdir(parents=True, exist_ok=True)
    for partial in cache_dir.glob("*.partial"):
        partial.unlink()
    settings_path.write_text(json.dumps(asdict(settings), indent=2))


def build_cache(
    tasks: list[CacheTask], settings: CacheSettings, workers: int = 0, progress: bool = True
) -> Iterator[CacheResult]:
    """Cache every task's image, skipping those already cached; yields one result per task.

    workers=0 uses one process per core; workers=1 runs in this process.
    """
    todo = [task for task in tasks if not Path(task.cache_path).exists()]
    for task in tasks:
        if Path(task.cache_path).exists():
            yield CacheResult(task.image_id, None)
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), desc="caching images", unit="img", disable=not progress)
    with bar:
        if workers == 1:
            for task in todo:
                yield cache_one(task, settings)
                bar.update()
            return
        chunksize = max(1, min(32, len(todo) // (workers * 8) or 1))
        with worker_pool(workers) as pool:  # workers die with this process, even on SIGKILL
            settings_each = [settings] * len(todo)
            for result in pool.map(cache_one, todo, settings_each, chunksize=chunksize):
                yield result
                bar.update()
