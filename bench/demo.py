"""The demo pipeline end to end: its wall time against its stages' own time, and its
quality over seeds.

    python bench/demo.py [--seeds 3] [--keep DIR] [--json OUT]
    python bench/demo.py --quick        # up to `split` only, one seed (seconds)

Each seed runs `dvc repro` in a fresh clone of the committed tree (HEAD: what a user
gets). Seed 0 is params.yaml as committed, the `make demo` run; seed k > 0 moves every seed
of the pipeline by k (split, classifier, detector, two-stage), so the holdout and the
training draws change together. Rows:

- wall time of `dvc repro` against the sum of the stages' own times (`cxrdet stage-times`:
  their MLflow runs, process start-up excluded), seed 0 only; target <= 1.5x;
- the detector alone (results/detector/metrics.json): out-of-fold RSNA score and mAP@0.4,
  against the mean-box baseline; mean over seeds, spread in the row's note;
- the evaluate ablation (results/evaluate/metrics.json): each row's holdout score, mean
  and spread over seeds, against the full ensemble's mean.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from common import Report, Row, arguments, emit, machine

ROOT = Path(__file__).resolve().parents[1]
SEEDED = (  # every seed of the demo's params, moved together by a bench seed
    ("split", "seed"),
    ("classifier", "optim", "seed"),
    ("detector", "optim", "seed"),
    ("detector", "two_stage", "optim", "seed"),
)


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CXRDET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env | {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def clone(target: Path, seed: int) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    if seed:
        path = target / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for keys in SEEDED:
            section = params
            for key in keys[:-1]:
                section = section[key]
            section[keys[-1]] += seed
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    return target


def run_pipeline(root: Path, target: str | None) -> dict[str, Any]:
    """`dvc repro [target]` in `root`: wall seconds, the stages' own seconds, load around it."""
    env = environment()
    load_before = os.getloadavg()[0]
    start = time.time()
    command = ["dvc", "repro", *([target] if target else [])]
    completed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if completed.returncode != 0:
        raise SystemExit(f"{root}: {' '.join(command)} failed\n{completed.stderr[-3000:]}")
    from cxrdet.config import load_params
    from cxrdet.tracking.timings import stage_timings

    params = load_params(root / "params.yaml")
    stages = stage_timings(root, params.tracking.experiment, int(start * 1000))
    return {
        "wall": wall,
        "stages": float(stages["seconds"].sum()),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def quality(root: Path) -> dict[str, float]:
    detector = json.loads((root / "results/detector/metrics.json").read_text())
    evaluate = json.loads((root / "results/evaluate/metrics.json").read_text())
    scores = {
        "detector oof RSNA": detector["oof_rsna_score"],
        "detector oof mAP@0.4": detector["oof_map"],
        "mean-box oof RSNA": detector["baseline"]["oof_rsna_score"],
    }
    return scores | {
        f"holdout {name}": row["score"]
        for name, row in evaluate["ablation"].items()
        if row["score"] is not None
    }


def spread(values: Sequence[float]) -> str:
    if len(values) < 2:
        return "one seed"
    return (
        f"sd {statistics.stdev(values):.3f}, min {min(values):.3f}, max {max(values):.3f} "
        f"over {len(values)} seeds"
    )


def rows(timing: dict[str, Any], seeds: list[dict[str, float]]) -> list[Row]:
    found = [
        Row(
            "demo wall time / stage time",
            timing["wall"],
            timing["stages"],
            "s",
            target="<= 1.5x",
            note=(
                f"load average {timing['load_before']:.1f} before, {timing['load_after']:.1f} after"
            ),
        )
    ]
    if not seeds:
        return found

    def mean(name: str) -> float:
        return statistics.fmean(seed[name] for seed in seeds)

    found += [
        Row(
            "detector oof RSNA (vs mean box)",
            mean("detector oof RSNA"),
            mean("mean-box oof RSNA"),
            "RSNA",
            target=">= 0.3 abs",
            note=spread([seed["detector oof RSNA"] for seed in seeds]),
        ),
        Row(
            "detector oof mAP@0.4",
            mean("detector oof mAP@0.4"),
            None,
            "mAP",
            target=">= 0.5 abs",
            note=spread([seed["detector oof mAP@0.4"] for seed in seeds]),
        ),
    ]
    shared = set.intersection(*(set(seed) for seed in seeds))
    found += [
        Row(
            f"{name} (vs ensemble)",
            mean(name),
            mean("holdout ensemble"),
            "RSNA",
            note=spread([seed[name] for seed in seeds]),
        )
        for name in sorted(n for n in shared if n.startswith("holdout "))
    ]
    return found


def main() -> None:
    parser = arguments(__doc__, "up to `split` only, one seed (seconds)")
    parser.add_argument("--seeds", type=int, default=3, help="pipelines run (seed 0, 1, ...)")
    parser.add_argument("--keep", type=Path, help="keep seed 0's clone here (its results)")
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    measured: list[dict[str, float]] = []
    timing: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cxrdet-demo-") as scratch:
        for seed in range(seeds):
            root = clone(Path(scratch) / f"seed{seed}", seed)
            result = run_pipeline(root, "split" if args.quick else None)
            if seed == 0:
                timing = result
            if not args.quick:
                measured.append(quality(root))
            print(f"seed {seed}: {json.dumps(result | (measured[-1] if measured else {}))}")
            if seed == 0 and args.keep:
                shutil.copytree(root, args.keep, symlinks=True, dirs_exist_ok=True)
    report = Report(
        "demo",
        f"`dvc repro` of {'the stages up to split' if args.quick else 'the demo'} in a fresh "
        f"clone of HEAD, {seeds} seed(s), {os.cpu_count()} CPUs",
        rows(timing, measured),
        [
            "stage time: the stages' MLflow runs (`cxrdet stage-times`), Python start-up and "
            "DVC's own work excluded; timing from seed 0 (params.yaml as committed)",
        ],
        machine(),
    )
    emit(report, args.json)


if __name__ == "__main__":
    main()
