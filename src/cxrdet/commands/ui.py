"""`cxrdet ui`: the MLflow UI on the project's store, opened on the runs table.

    cxrdet ui [--host 127.0.0.1] [--port 5000] [--workers 1] [--print-url]

Prints the URL of the experiment's runs table (params' tracking.experiment), then runs
`mlflow ui` on the project store (`make ui`). With MLFLOW_TRACKING_URI pointing at a
tracking server there is nothing to start: the URL is the server's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cxrdet.commands.arguments import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "ui", "the MLflow UI, opened on the runs table", __doc__, run)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="server processes (one user: 1)")
    parser.add_argument("--print-url", action="store_true", help="print the URL, start nothing")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (params.yaml)")


def runs_table_url(base: str, experiment_id: str) -> str:
    """The UI's runs table of one experiment (MLflow 3's route /experiments/<id>/runs), with
    the sidebar in its model-training mode (it opens in GenAI mode, whatever the experiment)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run(args: argparse.Namespace) -> int:
    from urllib.parse import urlparse

    from cxrdet.config import load_params
    from cxrdet.tracking.store import artifact_root, configure, ensure_experiment

    root = args.root.resolve()
    params = load_params(root / "params.yaml")
    uri = configure(root, params.tracking.tracking_uri)
    experiment_id = ensure_experiment(params.tracking.experiment, root)
    if urlparse(uri).scheme in ("http", "https"):
        print(f"runs table: {runs_table_url(uri, experiment_id)}")
        return 0
    print(f"runs table: {runs_table_url(f'http://{args.host}:{args.port}', experiment_id)}")
    if args.print_url:
        return 0
    sys.stdout.flush()
    artifact_root(root).mkdir(parents=True, exist_ok=True)
    mlflow = str(Path(sys.executable).with_name("mlflow"))  # this environment's MLflow
    command = [mlflow, "ui", "--backend-store-uri", uri]
    command += ["--default-artifact-root", str(artifact_root(root))]
    command += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    os.execv(mlflow, command)
    return 0  # not reached: the process is mlflow's now
