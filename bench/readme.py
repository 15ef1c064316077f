"""README's benchmark tables, rendered from the committed bench reports (bench/results/*.json).

A README block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` holds the table of
bench/results/NAME.json (written by a bench script's `--json`): its context line, the table
bench/common.py prints, and the notes. `--check` rewrites nothing and exits 1 when a block
differs from its report, so a stale number fails the tests (tests/test_bench_readme.py).

    python bench/readme.py            # rewrite README.md's bench blocks from bench/results/
    python bench/readme.py --check    # exit 1 and name the stale blocks
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common import Report, table

BENCH = Path(__file__).resolve().parent
README = BENCH.parent / "README.md"
RESULTS = BENCH / "results"
BLOCK = re.compile(
    r"(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.DOTALL
)


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a block is stale; write nothing"
    )
    args = parser.parse_args()
    text, changed = rendered(README.read_text())
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
