"""synthesize: every format's writer in turn, then samples.png."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cxrdet.data.sources.synthetic.folder import write_folder
from cxrdet.data.sources.synthetic.nih import write_nih
from cxrdet.data.sources.synthetic.rsna import write_rsna
from cxrdet.data.sources.synthetic.samples import Sample, write_samples
from cxrdet.data.sources.synthetic.spec import DemoSpec
from cxrdet.data.sources.synthetic.vinbigdata import write_vinbigdata
from cxrdet.data.tables import SourceTables
from cxrdet.runtime.pool import worker_pool

_WRITERS: dict[str, Callable[[Path, DemoSpec, bool], tuple[SourceTables, Sample]]] = {
    "rsna": write_rsna,
    "vinbigdata": write_vinbigdata,
    "nih": write_nih,
    "folder": write_folder,
}


def synthesize(out_dir: Path, spec: DemoSpec, *, progress: bool = True) -> dict[str, SourceTables]:
    """Write the four demo datasets and samples.png under out_dir; return what a correct
    parser of each format must read back (paths relative to out_dir/<format>)."""
    out_dir = Path(out_dir)
    for name in _WRITERS:
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)  # stale files from a larger spec would be read as data
    # The formats draw from their own seeded streams, so they render in parallel, same bytes.
    with worker_pool(min(len(_WRITERS), os.cpu_count() or 1)) as pool:
        futures = {
            name: pool.submit(writer, out_dir / name, spec, progress)
            for name, writer in _WRITERS.items()
        }
        written = {name: future.result() for name, future in futures.items()}
    write_samples(out_dir / "samples.png", [sample for _, sample in written.values()])
    return {name: tables for name, (tables, _) in written.items()}
