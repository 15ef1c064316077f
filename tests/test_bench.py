"""Benchmarks stay runnable: each runs in --quick mode and prints its ratio table.

No timing is asserted (timings belong to the benchmarks, not the tests).
"""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script", ["prepare", "metrics", "detector"])
def test_bench_quick_mode_prints_a_ratio(project_root, script):
    completed = subprocess.run(
        [sys.executable, str(project_root / "bench" / f"{script}.py"), "--quick"],
        capture_output=True, text=True, timeout=600, cwd=project_root,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    header = next(line for line in completed.stdout.splitlines() if line.startswith("measure"))
    assert "ratio" in header and "baseline" in header
