"""README's benchmark tables are the committed bench reports' (bench/readme.py): a number
changed in either place without the other fails here."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))
import readme  # noqa: E402

import common  # noqa: E402


def test_readme_bench_blocks_match_the_committed_reports():
    text = readme.README.read_text()
    blocks = readme.BLOCK.findall(text)
    assert {"quality", "quality-ablations"} <= {match[1] for match in blocks}
    _, changed = readme.rendered(text)
    assert not changed, f"stale README bench blocks {changed}: run .venv/bin/python bench/readme.py"


def test_a_changed_report_number_is_caught(tmp_path):
    report = common.Report(
        "demo", "ctx", [common.Row("mAP", 0.5, 0.25, "mAP", target=">= 1.1x")], ["a note"]
    )
    (tmp_path / "demo.json").write_text(json.dumps(report.to_json()))
    text = "intro\n<!-- bench:demo -->\nold\n<!-- /bench:demo -->\nrest\n"
    fresh, changed = readme.rendered(text, tmp_path)
    assert (
        changed == ["demo"] and "2.00x" in fresh and fresh.endswith("<!-- /bench:demo -->\nrest\n")
    )
    assert readme.rendered(fresh, tmp_path)[1] == []  # rendered once: in sync
    report.rows[0].ours = 0.75
    (tmp_path / "demo.json").write_text(json.dumps(report.to_json()))
    assert readme.rendered(fresh, tmp_path)[1] == ["demo"]


def test_readme_demo_numbers_are_the_committed_metrics():
    text = readme.README.read_text()
    assert readme.DEMO_BLOCK.search(text), "README.md lost its <!-- demo:results --> block"
    _, changed = readme.rendered_all(text)
    assert not changed, f"stale README blocks {changed}: run .venv/bin/python bench/readme.py"


def test_a_changed_demo_metric_is_caught(tmp_path, project_root):
    for file in {file for _, file, _ in readme.DEMO_NUMBERS}:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project_root / file, tmp_path / file)
    before = readme.demo_table(tmp_path)
    path = tmp_path / "results/detector/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["oof_rsna_score"] += 0.01
    path.write_text(json.dumps(metrics))
    assert readme.demo_table(tmp_path) != before
