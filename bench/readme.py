"""README's number tables, rendered from committed files: the bench reports
(bench/results/*.json) and the demo pipeline's metrics (results/**, committed beside dvc.lock).

A README block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` holds the table of
bench/results/NAME.json (written by a bench script's `--json`): its context line, the table
bench/common.py prints, and the notes. The block `<!-- demo:results -->` holds the demo's
headline numbers, read from the metrics files `dvc repro` wrote (DEMO_NUMBERS). `--check`
rewrites nothing and exits 1 when a block differs from its source, so a stale number fails
the tests (tests/test_bench_readme.py).

    python bench/readme.py            # rewrite README.md's blocks from bench/results/ and results/
    python bench/readme.py --check    # exit 1 and name the stale blocks
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from common import Report, table

BENCH = Path(__file__).resolve().parent
README = BENCH.parent / "README.md"
RESULTS = BENCH / "results"
BLOCK = re.compile(
    r"(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.DOTALL
)
DEMO_BLOCK = re.compile(
    r"(<!-- demo:results -->\n)(?P<body>.*?)(<!-- /demo:results -->)", re.DOTALL
)
PROJECT = BENCH.parent
# The demo's headline numbers: (what, metrics file under the project, key path in it).
DEMO_NUMBERS: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "classifiers: out-of-fold AUC, every model and view",
        "results/classifier/metrics.json",
        ("oof_auc",),
    ),
    ("classifiers: holdout AUC", "results/classifier/metrics.json", ("holdout_auc",)),
    (
        "detector alone: out-of-fold RSNA score",
        "results/detector/metrics.json",
        ("oof_rsna_score",),
    ),
    ("detector alone: out-of-fold mAP@0.4", "results/detector/metrics.json", ("oof_map",)),
    (
        "detector alone: holdout RSNA score (mean of fold models)",
        "results/detector/metrics.json",
        ("holdout_rsna_score",),
    ),
    (
        "mean-box baseline: out-of-fold RSNA score",
        "results/detector/metrics.json",
        ("baseline", "oof_rsna_score"),
    ),
    (
        "ensemble: out-of-fold RSNA score, untuned recipe",
        "results/tuning/ensemble.json",
        ("untuned", "rsna_score"),
    ),
    (
        "ensemble: out-of-fold RSNA score, tuned recipe",
        "results/tuning/ensemble.json",
        ("rsna_score",),
    ),
    ("ensemble: holdout RSNA score (evaluate)", "results/evaluate/metrics.json", ("rsna_score",)),
]


def render(report: Report, source: str) -> str:
    """The block's body: a fenced table under the report's context, from `source`."""
    lines = [
        f"{report.bench}: {report.context}",
        *table(report.rows),
        *(f"note: {note}" for note in report.notes),
    ]
    return (
        f"From `{source}` (rendered by `bench/readme.py`):\n\n```text\n"
        + "\n".join(lines)
        + "\n```\n"
    )


def rendered(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """(README text with every bench block rendered anew, names of the blocks that changed)."""
    changed: list[str] = []

    def block(match: re.Match[str]) -> str:
        name = match["name"]
        path = results / f"{name}.json"
        if not path.is_file():
            raise SystemExit(f"README.md: block bench:{name} has no report {path}")
        body = render(Report.from_json(json.loads(path.read_text())), f"bench/results/{name}.json")
        if body != match["body"]:
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(block, text), changed


def lookup(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        data = data[key]
    return data


def demo_table(project: Path = PROJECT) -> str:
    """The demo block's body: DEMO_NUMBERS, then each detector family alone and each row of
    the evaluate ablation, from the committed metrics files."""
    loaded: dict[str, Any] = {}

    def read(file: str) -> Any:
        if file not in loaded:
            path = project / file
            if not path.is_file():
                raise SystemExit(f"README.md: block demo:results needs {file}: run `make demo`")
            loaded[file] = json.loads(path.read_text())
        return loaded[file]

    detector, evaluate = "results/detector/metrics.json", "results/evaluate/metrics.json"
    numbers = list(DEMO_NUMBERS)
    numbers += [
        (
            f"detector family {name} alone: out-of-fold RSNA score",
            detector,
            ("models", name, "oof_rsna_score"),
        )
        for name in read(detector).get("models", {})
    ]
    numbers += [
        (f"evaluate ablation `{name}`: holdout RSNA score", evaluate, ("ablation", name, "score"))
        for name in read(evaluate)["ablation"]
    ]
    lines = ["| what | value | from |", "| --- | ---: | --- |"]
    for what, file, keys in numbers:
        number = lookup(read(file), keys)
        shown = "n/a" if number is None else f"{number:.3f}"
        lines.append(f"| {what} | {shown} | `{file}` {'.'.join(keys)} |")
    return (
        "Rendered by `bench/readme.py` from the metrics files `dvc.lock` records:\n\n"
        + "\n".join(lines)
        + "\n"
    )


def rendered_all(text: str) -> tuple[str, list[str]]:
    """(README with every bench block and the demo block rendered anew, the changed blocks)."""
    text, changed = rendered(text)

    def block(match: re.Match[str]) -> str:
        body = demo_table()
        if body != match["body"]:
            changed.append("demo:results")
        return match.group(1) + body + match.group(3)

    return DEMO_BLOCK.sub(block, text), changed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a block is stale; write nothing"
    )
    args = parser.parse_args()
    text, changed = rendered_all(README.read_text())
    if args.check:
        if changed:
            print(
                f"README.md: stale bench blocks: {', '.join(changed)} (run python bench/readme.py)",
                file=sys.stderr,
            )
            raise SystemExit(1)
        return
    README.write_text(text)
    print(f"README.md: rendered {', '.join(changed) or 'nothing (up to date)'}")


if __name__ == "__main__":
    main()
