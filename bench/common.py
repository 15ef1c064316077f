"""What every bench script shares: one row type, one table, `--quick` / `--json OUT`, and a
workload run in a fresh spawned process that reports its seconds and peak RSS.

A bench script builds a `Report` (one context line, `Row`s, notes) and calls `emit`; it then
prints the table every script prints (header `measure ours baseline unit ratio target
peak RSS`) and, with `--json OUT`, writes the same report as JSON for bench/run_all.py,
which prints every script's rows as one table. This module is not a bench script (it has
no `__main__` block, so run_all.py skips it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One measure: our figure, the baseline's (same run, same machine) and their ratio.

    `ratio` defaults to ours / baseline (right for rates: images/s); for durations use
    `Row.speedup`, whose ratio is baseline / ours. Either way the row says what it is, and
    `target` is the ratio the design aims at (text: ">= 10x", "~1.0x"; empty for
    information). Peak RSS in MiB of the process that ran each side, where measured.
    """

    measure: str
    ours: float | None
    baseline: float | None
    unit: str
    ratio: float | None = None
    target: str = ""
    ours_rss_mb: float | None = None
    baseline_rss_mb: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and self.ours is not None and self.baseline:
            self.ratio = self.ours / self.baseline

    @classmethod
    def speedup(
        cls, measure: str, ours: float, baseline: float, unit: str = "s", **extra: Any
    ) -> Row:
        """A duration row: the ratio is baseline / ours (how many times faster we are)."""
        return cls(measure, ours, baseline, unit, ratio=baseline / ours if ours else None, **extra)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def median_of_repeats(repeats: list[list[Row]]) -> list[Row]:
    """One row per measure out of the same rows measured `len(repeats)` times: the medians of
    ours and of the baseline, the ratio the median of each repeat's paired ratio (both sides
    of a repeat ran back to back), its range in the note, and the largest peak RSS."""
    if len(repeats) == 1:
        return repeats[0]
    combined = []
    for same in zip(*repeats, strict=True):
        first = same[0]
        ratios = [row.ratio for row in same if row.ratio is not None]
        spread = (
            f"ratio {min(ratios):.2f}x-{max(ratios):.2f}x over {len(same)} repeats"
            if ratios
            else f"{len(same)} repeats"
        )
        combined.append(
            Row(
                first.measure,
                _median([row.ours for row in same]),
                _median([row.baseline for row in same]),
                first.unit,
                ratio=_median(ratios),
                target=first.target,
                ours_rss_mb=max((r.ours_rss_mb for r in same if r.ours_rss_mb), default=None),
                baseline_rss_mb=max(
                    (r.baseline_rss_mb for r in same if r.baseline_rss_mb), default=None
                ),
                note=f"{first.note}; {spread}" if first.note else spread,
            )
        )
    return combined


@dataclass
class Report:
    bench: str
    context: str  # one line: sizes, model, device, threads
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "context": self.context,
            "rows": [asdict(row) for row in self.rows],
            "notes": self.notes,
            "machine": self.machine or machine(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        return cls(
            data["bench"],
            data["context"],
            [Row(**row) for row in data["rows"]],
            list(data.get("notes", [])),
            dict(data.get("machine", {})),
        )


def machine() -> dict[str, Any]:
    """What the figures depend on: cores, load average at the time, torch threads if loaded."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def arguments(
    description: str | None, quick_help: str = "the small run the tests use"
) -> argparse.ArgumentParser:
    """A parser with the two flags every bench script takes; add the script's own after."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--json",
        type=Path,
        metavar="OUT",
        help="also write the report as JSON (bench/run_all.py reads it)",
    )
    return parser


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) >= 0.01 else f"{value:.2g}"


def rss(row: Row) -> str:
    if row.ours_rss_mb is None and row.baseline_rss_mb is None:
        return "-"
    return f"{number(row.ours_rss_mb)} / {number(row.baseline_rss_mb)}"


COLUMNS = [
    ("measure", "<"),
    ("ours", ">"),
    ("baseline", ">"),
    ("unit", "<"),
    ("ratio", ">"),
    ("target", ">"),
    ("peak RSS MiB ours / base", ">"),
]


def table(rows: list[Row], first: tuple[str, list[str]] | None = None) -> list[str]:
    """The table's lines (header first; the rows' notes after it). `first`: an extra leading
    column (title, one value per row), which run_all.py uses for the script's name."""
    columns = ([(first[0], "<")] if first else []) + COLUMNS
    cells, notes = [], []
    for k, row in enumerate(rows):
        measure = row.measure
        if row.note:
            notes.append(f"  [{len(notes) + 1}] {row.measure}: {row.note}")
            measure = f"{row.measure} [{len(notes)}]"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        values = [
            measure,
            number(row.ours),
            number(row.baseline),
            row.unit,
            ratio,
            row.target or "-",
            rss(row),
        ]
        cells.append(([first[1][k]] if first else []) + values)
    titles = [title for title, _ in columns]
    widths = [max(len(value) for value in column) for column in zip(titles, *cells)]

    def line(values: list[str]) -> str:
        return "  ".join(
            f"{value:{align}{width}}" for value, width, (_, align) in zip(values, widths, columns)
        ).rstrip()

    return [line(titles)] + [line(values) for values in cells] + notes


def emit(report: Report, json_path: Path | None) -> None:
    """Print the report (context, table, notes) and write it as JSON when asked."""
    print(f"{report.bench}: {report.context}")
    print("\n".join(table(report.rows)))
    for note in report.notes:
        print(f"note: {note}")
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")


@dataclass(frozen=True)
class Measured:
    result: Any
    seconds: float  # wall time of the call inside the child (imports excluded)
    peak_rss_mb: float  # the child's own peak resident set
    children_peak_rss_mb: (
        float  # the largest peak of the processes the child started and waited for (0: none)
    )


def in_child(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Measured:
    """Run `function(*args, **kwargs)` in a freshly spawned interpreter (nothing inherited:
    peak RSS starts from the imports) and return its result, seconds and peak RSS, read
    inside the child (VmHWM; its children's with resource.getrusage). `function` must be
    importable (module level)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args, kwargs))
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        status, payload = "error", "the process ended without an answer"
    process.join()
    if status != "ok":
        raise RuntimeError(
            f"{function.__name__} failed in its spawned process (exit {process.exitcode}):"
            f"\n{payload}"
        )
    return Measured(**payload)


def _child(sender: Any, function: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds = time.perf_counter() - start
        sender.send(
            (
                "ok",
                {
                    "result": result,
                    "seconds": seconds,
                    "peak_rss_mb": peak_rss_mb(),
                    "children_peak_rss_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
                },
            )
        )
    except BaseException:  # noqa: BLE001 - the parent reports it
        sender.send(("error", traceback.format_exc()))
    finally:
        sender.close()


def peak_rss_mb() -> float:
    """This process's peak RSS. On Linux /proc/self/status VmHWM: getrusage's ru_maxrss
    survives exec, so a spawned child would report at least the RSS its parent had when it
    forked; VmHWM belongs to the new address space and starts from zero."""
    return _vm_hwm_mb("self") or _maxrss_mb(resource.RUSAGE_SELF)


def descendants_peak_rss_mb() -> float | None:
    """The largest peak RSS among this process's live descendants (e.g. a server and its
    workers); None where /proc is missing (not Linux)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = (
                stat.read_text().rsplit(")", 1)[1].split()
            )  # after "pid (name)": state, ppid, ...
        except OSError:
            continue  # ended while we looked
        parents[int(stat.parent.name)] = int(fields[1])
    descendants, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - descendants
        descendants |= frontier
    peaks = [peak for pid in descendants if (peak := _vm_hwm_mb(str(pid))) is not None]
    return max(peaks, default=None)


def _vm_hwm_mb(pid: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _maxrss_mb(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
