"""Prepare: throughput with one worker vs one per core, and peak memory at two dataset sizes.

    python bench/prepare.py [--quick] [--json OUT]

Every prepare runs cold (empty cache) in a freshly spawned process, which reports its
seconds and peak RSS (resource.getrusage in the child). Rows:

- images/s, all cores vs 1 worker, on the same synthetic RSNA DICOMs (target: close to the
  core count, since decoding and resizing are independent per image). RSS: the main
  process; the pool workers' peak is in the row's note.
- peak RSS of a 1-worker prepare (everything in one process) of N images (the 1-worker
  run above) vs N/4 of them (the same DICOMs, the label CSVs cut): the cache is streamed
  image by image, so memory must not grow with the number of images (target ~1.0x; the
  tables add some bytes per image).

Full: 160 DICOMs of 1024 px (the RSNA size), memory 160 vs 40. `--quick`: 32 of 256 px,
32 vs 8.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from common import Report, Row, arguments, emit, in_child


def prepare_cold(raw_dir: Path, out_dir: Path, workers: int, image_size: int) -> int:
    """Prepare `raw_dir` (RSNA format) into an empty `out_dir`; the number of images cached."""
    import shutil

    from cxrdet.data.prepare import PrepareOptions, prepare_dataset

    shutil.rmtree(out_dir, ignore_errors=True)
    options = PrepareOptions(image_size=image_size, workers=workers, sample_grid=0, progress=False)
    return len(prepare_dataset("rsna", raw_dir, out_dir, options).images)


def synthetic_rsna(out: Path, images: int, size: int, seed: int = 1) -> Path:
    """`images` synthetic RSNA DICOMs of `size` px (the other demo formats kept minimal)."""
    from cxrdet.data.sources.synthetic import DemoSpec, synthesize

    spec = DemoSpec(
        seed=seed,
        image_size=size,
        rsna_images=images,
        vinbigdata_images=1,
        nih_images=1,
        folder_images=1,
    )
    synthesize(out, spec, progress=False)
    return out / "rsna"


def first_patients(raw: Path, out: Path, count: int) -> Path:
    """An RSNA folder of `raw`'s first `count` patients: the two label CSVs cut, the images
    folder linked (prepare reads only the listed patients' DICOMs)."""
    import pandas as pd

    from cxrdet.data.sources.rsna import CLASS_INFO_FILE, IMAGES_DIR, LABELS_FILE

    out.mkdir(parents=True)
    labels = pd.read_csv(raw / LABELS_FILE)
    kept = labels["patientId"].drop_duplicates().head(count)
    labels[labels["patientId"].isin(kept)].to_csv(out / LABELS_FILE, index=False)
    classes = pd.read_csv(raw / CLASS_INFO_FILE)
    classes[classes["patientId"].isin(kept)].to_csv(out / CLASS_INFO_FILE, index=False)
    (out / IMAGES_DIR).symlink_to((raw / IMAGES_DIR).resolve(), target_is_directory=True)
    return out


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument(
        "--cache-size", type=int, default=256, help="cached image side (params: prepare.image_size)"
    )
    args = parser.parse_args()
    count, source_size = (32, 256) if args.quick else (160, 1024)
    small = count // 4
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="cxrdet-bench-prepare-") as tmp:
        root = Path(tmp)
        raw = synthetic_rsna(root / "raw", count, source_size)
        one = in_child(prepare_cold, raw, root / "one", 1, args.cache_size)
        every = in_child(prepare_cold, raw, root / "all", cores, args.cache_size)
        few = in_child(
            prepare_cold,
            first_patients(raw, root / "few", small),
            root / "out-few",
            1,
            args.cache_size,
        )
    assert one.result == every.result == count and few.result == small, (
        one.result,
        every.result,
        few.result,
    )
    rows = [
        Row(
            f"images/s, {cores} workers vs 1",
            count / every.seconds,
            count / one.seconds,
            "img/s",
            target=f"~{cores}x",
            ours_rss_mb=every.peak_rss_mb,
            baseline_rss_mb=one.peak_rss_mb,
            note=f"largest pool worker's peak RSS {every.children_peak_rss_mb:.0f} MiB",
        ),
        Row(
            f"peak RSS, {count} vs {small} images",
            one.peak_rss_mb,
            few.peak_rss_mb,
            "MiB",
            target="~1.0x",
            ours_rss_mb=one.peak_rss_mb,
            baseline_rss_mb=few.peak_rss_mb,
            note=(
                f"1 worker, {count / one.seconds:.1f} vs {small / few.seconds:.1f} img/s; "
                "streamed: memory must not grow with the number of images"
            ),
        ),
    ]
    emit(
        Report(
            "prepare",
            f"{count} RSNA DICOMs {source_size} px -> {args.cache_size} px cache "
            f"(memory: {count} vs {small} of them), {cores} cores; "
            "each prepare cold in a spawned process",
            rows,
        ),
        args.json,
    )


if __name__ == "__main__":
    main()
