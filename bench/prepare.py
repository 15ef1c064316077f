"""Prepare throughput: one worker vs one per core, on the same synthetic RSNA-format data.

Prints images/s for both and the ratio (target: close to the core count, since decoding
and resizing are independent per image). `--quick` is the small run the tests use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from cxrdet.data.prepare import PrepareOptions, prepare_dataset
from cxrdet.data.sources.synthetic import DemoSpec, synthesize


def time_prepare(raw_dir: Path, out_dir: Path, workers: int, image_size: int) -> float:
    """Seconds for a cold prepare (cache emptied first, so nothing is reused)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    options = PrepareOptions(image_size=image_size, workers=workers, sample_grid=0, progress=False)
    start = time.perf_counter()
    prepare_dataset("rsna", raw_dir, out_dir, options)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    args = parser.parse_args()
    n_images, source_size = (24, 256) if args.quick else (300, 1024)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        spec = DemoSpec(
            seed=1,
            image_size=source_size,
            rsna_images=n_images,
            vinbigdata_images=8,
            nih_images=8,
            folder_images=4,
        )
        synthesize(tmp_path / "raw", spec, progress=False)
        raw = tmp_path / "raw" / "rsna"
        baseline = time_prepare(raw, tmp_path / "one", 1, 256)
        ours = time_prepare(raw, tmp_path / "all", cores, 256)
    print(f"prepare: {n_images} RSNA DICOMs {source_size}px -> 256px cache, {cores} cores")
    print(f"{'measure':<22}{'ours':>12}{'baseline':>12}{'ratio':>8}{'target':>8}")
    print(
        f"{'images/s (all cores)':<22}{n_images / ours:>12.1f}{n_images / baseline:>12.1f}"
        f"{baseline / ours:>8.2f}{f'~{cores}x':>8}"
    )


if __name__ == "__main__":
    main()
