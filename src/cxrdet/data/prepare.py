"""raw dataset -> canonical tables + uint8 image cache + rejected list + statistics.

Output folder layout (one folder per prepared dataset):
    images.parquet   canonical images + cache_path (relative to the folder), scale_x, scale_y
    boxes.parquet    canonical boxes, original pixels
    targets.parquet  image_id + multi-label targets (NIH: 15 columns; other formats: none)
    rejected.csv     unreadable images and dropped rows, with reasons
    dataset.json     format, class names, image labels, counts, data hash
    stats.json       statistics (a DVC metrics file)
    samples.png      a grid of cached images with their boxes
    cache/           <image_id>.png, the resized images
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.data.cache import (
    CacheSettings,
    CacheTask,
    build_cache,
    prepare_cache_dir,
    read_cached,
)
from cxrdet.data.sources import load_source
from cxrdet.data.tables import SourceTables
from cxrdet.errors import CxrdetError
from cxrdet.io import write_csv, write_json, write_parquet
from cxrdet.viz import sample_grid

REJECTED_COLUMNS = ["kind", "image_id", "file", "row", "reason"]


@dataclass(frozen=True)
class PrepareOptions:
    image_size: int = 256
    workers: int = 0
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    max_rejected_fraction: float = 0.05
    on_bad_rows: str = "raise"
    fuse_readers: bool = False
    fuse_iou: float = 0.4
    sample_grid: int = 12  # images drawn with their boxes into samples.png
    seed: int = 0  # which images the sample grid shows
    progress: bool = True


@dataclass(frozen=True)
class PreparedDataset:
    out_dir: Path
    images: pd.DataFrame
    boxes: pd.DataFrame
    info: dict
    stats: dict
    rejected: pd.DataFrame


def prepare_dataset(
    fmt: str,
    raw_dir: Path,
    out_dir: Path,
    options: PrepareOptions,
    raw_dir_name: str | None = None,
) -> PreparedDataset:
    """The raw dataset in `out_dir` (the files listed above).

    `raw_dir_name`: how dataset.json names the raw folder (default: `raw_dir` as given);
    stages pass params.yaml's project-relative value, so no machine path is in a DVC output.
    """
    given_raw_dir = raw_dir_name if raw_dir_name is not None else str(raw_dir)
    raw_dir, out_dir = Path(raw_dir).resolve(), Path(out_dir)
    if not raw_dir.is_dir():
        raise CxrdetError(f"{raw_dir}: raw data folder not found (format {fmt!r})")
    source_options = (
        {"fuse_readers": True, "fuse_iou": options.fuse_iou} if options.fuse_readers else {}
    )
    tables = load_source(fmt, raw_dir, on_bad_rows=options.on_bad_rows, **source_options)
    if len(tables.images) + len(tables.rejected) == 0:
        raise CxrdetError(f"{raw_dir}: no images found for format {fmt!r}")

    settings = CacheSettings(options.image_size, options.low_percentile, options.high_percentile)
    cache_dir = out_dir / "cache"
    prepare_cache_dir(cache_dir, settings)
    tasks = [
        CacheTask(image_id, str(raw_dir / path), str(cache_dir / f"{image_id}.png"))
        for image_id, path in zip(tables.images["image_id"], tables.images["path"])
    ]
    failures = {
        result.image_id: result.error
        for result in build_cache(tasks, settings, options.workers, options.progress)
        if result.error is not None
    }
    rejected = _rejected_table(tables, failures)
    total = len(tables.images) + len(tables.rejected)
    n_rejected = len(tables.rejected) + len(failures)

    images = tables.images[~tables.images["image_id"].isin(failures)].copy()
    boxes = tables.boxes[tables.boxes["image_id"].isin(images["image_id"])].reset_index(drop=True)
    images["cache_path"] = "cache/" + images["image_id"] + ".png"
    images["scale_x"] = options.image_size / images["width"]
    images["scale_y"] = options.image_size / images["height"]
    images = images.reset_index(drop=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(images, out_dir / "images.parquet")
    write_parquet(boxes, out_dir / "boxes.parquet")
    write_parquet(_kept_targets(tables, images), out_dir / "targets.parquet")
    write_csv(rejected, out_dir / "rejected.csv")

    info = {
        "format": fmt,
        "raw_dir": given_raw_dir,
        "image_size": options.image_size,
        "class_names": list(tables.class_names),
        "image_labels": list(tables.image_labels),
        "target_names": list(tables.targets.columns) if tables.targets is not None else [],
        "data_hash": data_hash(images, boxes, cache_dir),
    }
    write_json(info, out_dir / "dataset.json")
    stats = dataset_stats(images, boxes, n_rejected, total)
    write_json(stats, out_dir / "stats.json")
    write_sample_grid(images, boxes, out_dir, options.sample_grid, options.seed)

    check_rejected_fraction(
        n_rejected,
        total,
        options.max_rejected_fraction,
        "prepare.max_rejected_fraction",
        raw_dir,
        out_dir / "rejected.csv",
    )
    return PreparedDataset(out_dir, images, boxes, info, stats, rejected)


def check_rejected_fraction(
    n_rejected: int, total: int, limit: float, setting: str, source: Path, listing: Path
) -> None:
    """CxrdetError when more than `limit` of `total` images were rejected (what was read is
    kept; `listing`, the rejected CSV, says why)."""
    if n_rejected / total > limit:
        raise CxrdetError(
            f"{source}: {n_rejected} of {total} images rejected (> {setting}={limit}); "
            f"reasons in {listing}"
        )


def rejected_table(
    images: Iterable[tuple[str, str | Path, str]],
    rows: Iterable[tuple[str, int | None, str]] = (),
) -> pd.DataFrame:
    """The rejected CSV (REJECTED_COLUMNS): unreadable images as (image id, file, reason),
    dropped annotation rows as (file, row, problem)."""
    records = [("image", image_id, str(path), None, reason) for image_id, path, reason in images]
    records += [("row", None, file, row, problem) for file, row, problem in rows]
    table = pd.DataFrame(records, columns=REJECTED_COLUMNS)
    table["row"] = table["row"].astype("Int64")
    return table


def _kept_targets(tables: SourceTables, images: pd.DataFrame) -> pd.DataFrame:
    if tables.targets is None:
        return pd.DataFrame({"image_id": images["image_id"].to_numpy()})
    kept = tables.images["image_id"].isin(images["image_id"]).to_numpy()
    targets = tables.targets.loc[kept].reset_index(drop=True)
    targets.insert(0, "image_id", images["image_id"].to_numpy())
    return targets


def _rejected_table(tables: SourceTables, failures: dict[str, str]) -> pd.DataFrame:
    paths = dict(zip(tables.images["image_id"], tables.images["path"]))
    unreadable = [(image_id, paths[image_id], reason) for image_id, reason in failures.items()]
    return rejected_table([*tables.rejected, *unreadable], tables.dropped)


def write_sample_grid(
    images: pd.DataFrame, boxes: pd.DataFrame, out_dir: Path, count: int, seed: int
) -> Path:
    """samples.png (absent when count is 0): cached images with their boxes, positives first so
    lesions are shown."""
    path = out_dir / "samples.png"
    path.unlink(missing_ok=True)
    if count == 0 or images.empty:
        return path
    positives = images["image_id"].isin(boxes["image_id"])
    order = images.assign(positive=positives).sample(frac=1.0, random_state=seed)
    chosen = order.sort_values("positive", ascending=False, kind="stable").head(count)
    items = []
    for row in chosen.itertuples():
        cached = boxes[boxes["image_id"] == row.image_id].copy()
        cached[["x", "w"]] *= row.scale_x
        cached[["y", "h"]] *= row.scale_y
        items.append(
            (read_cached(out_dir / row.cache_path), cached, f"{row.image_id[:12]} {row.label}")
        )
    sample_grid(items, path)
    return path


def dataset_stats(images: pd.DataFrame, boxes: pd.DataFrame, n_rejected: int, total: int) -> dict:
    """Counts and box geometry (in cached pixels, what the anchors must match)."""
    scale = images.set_index("image_id")[["scale_x", "scale_y"]]
    cached = boxes.join(scale, on="image_id")
    sides = np.minimum(cached["w"] * cached["scale_x"], cached["h"] * cached["scale_y"])
    boxes_per_image = boxes.groupby("image_id").size().reindex(images["image_id"], fill_value=0)
    stats = {
        "n_images": int(len(images)),
        "n_boxes": int(len(boxes)),
        "n_rejected": int(n_rejected),
        "rejected_fraction": round(n_rejected / total, 6),
        "positive_fraction": round(float((boxes_per_image > 0).mean()), 6) if len(images) else 0.0,
        "boxes_per_positive_image": round(float(boxes_per_image[boxes_per_image > 0].mean()), 4)
        if len(boxes)
        else 0.0,
        "labels": {str(k): int(v) for k, v in images["label"].value_counts().sort_index().items()},
        "box_classes": {
            str(k): int(v) for k, v in boxes["class_name"].value_counts().sort_index().items()
        },
    }
    if len(boxes):
        stats["cached_box_min_side"] = {
            "min": round(float(sides.min()), 3),
            "median": round(float(sides.median()), 3),
            "max": round(float(sides.max()), 3),
        }
    return stats


def data_hash(images: pd.DataFrame, boxes: pd.DataFrame, cache_dir: Path) -> str:
    """Content hash of the prepared dataset (tables + cached pixels), stable across machines."""
    digest = hashlib.sha256()
    columns = ["image_id", "width", "height", "label", "patient_id"]
    ordered = images.sort_values("image_id")
    digest.update(ordered[columns].to_csv(index=False).encode())
    digest.update(boxes.sort_values(["image_id", "x", "y", "w", "h"]).to_csv(index=False).encode())
    for image_id in ordered["image_id"]:
        digest.update((cache_dir / f"{image_id}.png").read_bytes())
    return digest.hexdigest()[:16]
