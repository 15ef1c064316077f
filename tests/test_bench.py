"""Benchmarks stay runnable: each runs in --quick mode and prints its ratio table; those
that write --json (bench/common.py) give rows run_all.py can join into one table.

No timing is asserted (timings belong to the benchmarks, not the tests).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# bench/common.py and run_all.py are plain scripts, not a package; appended (not first) so they
# shadow nothing, and kept, as in_child's spawned processes import `common` by name.
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))
import run_all  # noqa: E402

import common  # noqa: E402

SCRIPTS = [path.stem for path in run_all.scripts(BENCH)]


def test_every_known_bench_is_discovered():
    assert {"prepare", "metrics", "detector", "tuning"} <= set(SCRIPTS)
    assert "common" not in SCRIPTS and "run_all" not in SCRIPTS and "readme" not in SCRIPTS
    assert "quality" in SCRIPTS


def test_table_shows_ours_baseline_ratio_target_and_rss():
    rows = [
        common.Row(
            "images/s", 20.0, 10.0, "img/s", target="~2x", ours_rss_mb=300.0, baseline_rss_mb=250.0
        ),
        common.Row.speedup("score", 0.5, 5.0, note="same score"),
        common.Row("information", None, 3.0, "MiB"),
    ]
    assert rows[0].ratio == 2.0 and rows[1].ratio == 10.0 and rows[2].ratio is None
    lines = common.table(rows, ("bench", ["a", "b", "c"]))
    assert lines[0].split()[:4] == ["bench", "measure", "ours", "baseline"]
    assert "2.00x" in lines[1] and "300 / 250" in lines[1]
    assert "10.00x" in lines[2] and "score [1]" in lines[2]
    assert lines[-1].endswith("score: same score")
    report = common.Report("x", "context", rows, ["a note"])
    assert common.Report.from_json(json.loads(json.dumps(report.to_json()))).rows == rows


def test_repeated_rows_become_medians_with_the_ratio_range():
    def run(ours: float, base: float, rss: float) -> list:
        return [
            common.Row("train img/s", ours, base, "img/s", target=">= 1.0x", ours_rss_mb=rss),
            common.Row.speedup("score", ours, base, note="same score"),
        ]

    rows = common.median_of_repeats([run(10, 5, 100), run(2, 4, 300), run(6, 6, 200)])
    train, score = rows
    assert (train.ours, train.baseline, train.ratio) == (6, 5, 1.0)  # ratios 2.0, 0.5, 1.0
    assert train.ours_rss_mb == 300 and train.target == ">= 1.0x"
    assert train.note == "ratio 0.50x-2.00x over 3 repeats"
    assert score.ratio == 1.0 and score.note == "same score; ratio 0.50x-2.00x over 3 repeats"
    single = run(1, 2, 3)
    assert common.median_of_repeats([single]) == single


def _allocate(megabytes: int) -> int:
    block = b"\x01" * (megabytes * 1024 * 1024)  # written: resident
    return len(block)


def test_in_child_reports_result_seconds_and_peak_rss():
    small, large = common.in_child(_allocate, 1), common.in_child(_allocate, 200)
    assert small.result == 1024 * 1024 and small.seconds >= 0
    assert (
        large.peak_rss_mb - small.peak_rss_mb > 150
    )  # a fresh process each: peaks do not carry over


def test_in_child_peak_rss_is_not_the_parents():
    held = b"\x01" * (600 * 1024 * 1024)  # getrusage's ru_maxrss would carry this into the child
    try:
        assert common.in_child(_allocate, 1).peak_rss_mb < 500
    finally:
        del held


def _fail(message: str) -> None:
    raise ValueError(message)


def test_descendants_peak_rss_sees_a_child_process_memory():
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; block = bytearray(300 * 2**20); print(flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        holder.stdout.readline()  # allocated
        assert common.descendants_peak_rss_mb() >= 250
    finally:
        holder.kill()
        holder.wait()


def test_in_child_names_the_failure():
    with pytest.raises(
        RuntimeError, match="(?s)_fail failed in its spawned process.*ValueError: no such image"
    ):
        common.in_child(_fail, "no such image")


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_quick_mode_prints_a_ratio(project_root, script, tmp_path):
    path = BENCH / f"{script}.py"
    command = [sys.executable, str(path), "--quick"]
    joins = run_all.speaks_json(path)
    if joins:
        command += ["--json", str(tmp_path / "report.json")]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=project_root
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    header = next(line for line in completed.stdout.splitlines() if line.startswith("measure"))
    assert "ratio" in header and "baseline" in header
    if joins:
        assert "ours" in header
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["bench"] == script and report["rows"]
        for row in report["rows"]:
            assert {"measure", "ours", "baseline", "unit", "ratio", "target"} <= set(row)


@pytest.mark.slow
def test_run_all_prints_one_table(project_root, tmp_path):
    out = tmp_path / "all.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run_all.py"),
            "--quick",
            "--only",
            "metrics",
            "--json",
            str(out),
            "--save",
            str(tmp_path / "saved"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=project_root,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    header = next(
        line for line in completed.stdout.splitlines() if line.split()[:2] == ["bench", "measure"]
    )
    assert all(word in header for word in ("measure", "ours", "baseline", "ratio", "target", "RSS"))
    reports = json.loads(out.read_text())["reports"]
    assert [report["bench"] for report in reports] == ["metrics"]
    assert json.loads((tmp_path / "saved" / "metrics.json").read_text()) == reports[0]
