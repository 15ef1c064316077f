"""Run every bench script, each in its own process, and print one table.

    python bench/run_all.py [--quick] [--only prepare metrics ...] [--json OUT] [--save DIR]

A bench script is any bench/*.py with a `__main__` block (so not this file, nor
bench/common.py, nor the README renderer bench/readme.py). Scripts that accept `--json OUT`
(they use bench/common.py's `arguments` and `emit`) join the table: what was measured, our
figure, the baseline's figure from the same run on the same machine, the ratio, the target
and peak RSS where measured. A script without `--json` still runs; its own output is printed
under the table. A failing script is reported and the others still run; the exit status is
then 1. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Report, machine, table

BENCH = Path(__file__).resolve().parent


NOT_BENCHES = {
    Path(__file__).name,
    "readme.py",
}  # tools beside the benchmarks: this runner, the README renderer


def scripts(folder: Path = BENCH) -> list[Path]:
    """The bench scripts in `folder`: *.py files with a __main__ block, except the tools."""
    return sorted(
        path
        for path in folder.glob("*.py")
        if path.name not in NOT_BENCHES and '__name__ == "__main__"' in path.read_text()
    )


def speaks_json(script: Path) -> bool:
    """Whether the script takes `--json OUT` (it builds its parser with common.arguments)."""
    text = script.read_text()
    return "--json" in text or ("from common import" in text and "arguments(" in text)


def run_one(script: Path, quick: bool, timeout: float) -> tuple[Report | None, str, float]:
    """(its report, or None when it wrote none; its output when it did not or failed; seconds)."""
    command = [sys.executable, str(script)] + (["--quick"] if quick else [])
    with tempfile.TemporaryDirectory(prefix="cxrdet-bench-") as tmp:
        out = Path(tmp) / "report.json"
        if speaks_json(script):
            command += ["--json", str(out)]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, cwd=BENCH.parent
            )
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s", time.perf_counter() - start
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            return None, f"failed (exit {done.returncode}):\n{done.stderr[-3000:]}", seconds
        if out.exists():
            return Report.from_json(json.loads(out.read_text())), "", seconds
        return None, done.stdout, seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="each script's --quick mode (runnable, not real figures)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="only these scripts (bench/NAME.py)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds per script (default 3600)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="OUT", help="also write every report as one JSON file"
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="also write each script's report as DIR/<script>.json (bench/results: what the "
        "README's bench blocks render, `python bench/readme.py`)",
    )
    args = parser.parse_args()
    chosen = scripts()
    if args.only:
        unknown = sorted(set(args.only) - {path.stem for path in chosen})
        if unknown:
            parser.error(
                f"no bench script named {', '.join(unknown)}; "
                f"found: {', '.join(p.stem for p in chosen)}"
            )
        chosen = [path for path in chosen if path.stem in args.only]
    reports, raw, failed = [], [], []
    start = time.perf_counter()
    for script in chosen:
        print(
            f"running bench/{script.name}{' --quick' if args.quick else ''} ...",
            file=sys.stderr,
            flush=True,
        )
        report, output, seconds = run_one(script, args.quick, args.timeout)
        print(f"  done in {seconds:.0f} s", file=sys.stderr, flush=True)
        if report is not None:
            reports.append(report)
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / f"{script.stem}.json").write_text(
                    json.dumps(report.to_json(), indent=2) + "\n"
                )
        elif output.startswith(("failed", "timed out")):
            failed.append(f"{script.stem}: {output}")
        else:
            raw.append((script.stem, output))
    info = machine()
    print(
        f"benchmarks{' (quick mode: smoke figures, not real ones)' if args.quick else ''}: "
        f"{info['cpus']} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
        f"{time.perf_counter() - start:.0f} s in all; "
        f"baselines measured in the same run on the same machine"
    )
    for report in reports:
        print(f"  {report.bench}: {report.context}")
    rows = [row for report in reports for row in report.rows]
    print()
    print(
        "\n".join(table(rows, ("bench", [report.bench for report in reports for _ in report.rows])))
    )
    for report in reports:
        for note in report.notes:
            print(f"note ({report.bench}): {note}")
    for name, output in raw:
        print(
            f"\nbench/{name}.py does not write --json (not in the table); its output:\n"
            f"{output.rstrip()}"
        )
    for failure in failed:
        print(f"\nFAILED {failure}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "machine": info,
                    "reports": [r.to_json() for r in reports],
                    "unjoined": dict(raw),
                    "failed": failed,
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
