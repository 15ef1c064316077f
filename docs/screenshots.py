"""The README's MLflow UI screenshots (docs/ui-*.png), taken by headless Chromium from a
served store after `make demo`:

    .venv/bin/cxrdet ui --port 5000 &        # serves mlruns/, prints the runs table's URL
    .venv/bin/python docs/screenshots.py http://127.0.0.1:5000
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def call(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def run_id(base: str, experiment_id: str, name: str) -> str:
    found = call(
        base,
        "runs/search",
        {
            "experiment_ids": [experiment_id],
            "filter": f"attributes.run_name = '{name}' AND attributes.status = 'FINISHED'",
            "order_by": ["attributes.start_time DESC"],
            "max_results": 1,
        },
    )
    return found["runs"][0]["info"]["run_id"]


def shoot(url: str, path: Path, size: str = "1800,1000") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium on PATH: `make browser` installs it")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                "--virtual-time-budget=30000",
                f"--screenshot={path}",
                url,
            ],
            capture_output=True,
            check=True,
            timeout=300,
        )
    print(path)


def main(base: str, experiment: str = "cxrdet", model: str = "cxrdet-rsna") -> None:
    experiment_id = call(base, f"experiments/get-by-name?experiment_name={experiment}")[
        "experiment"
    ]["experiment_id"]
    runs = f"{base}/#/experiments/{experiment_id}/runs"
    mode = "?workflowType=machine_learning"  # the sidebar's model-training mode
    shoot(f"{runs}{mode}", DOCS / "ui-runs.png")
    training = run_id(base, experiment_id, "train_detector@0")
    shoot(f"{runs}/{training}{mode}", DOCS / "ui-training-run.png", "1800,1700")
    tuning = run_id(base, experiment_id, "tune_ensemble")
    shoot(f"{runs}/{tuning}{mode}", DOCS / "ui-tuning-run.png", "1800,1700")
    shoot(f"{base}/#/models/{model}{mode}", DOCS / "ui-registry.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
