"""`cxrdet serve`: a registered ensemble behind MLflow's scoring server, offline.

    cxrdet serve --model models:/cxrdet-rsna@champion --host 127.0.0.1 -p 5001
    cxrdet serve --model models:/cxrdet-rsna@champion --path-root /srv/xrays

Runs `mlflow models serve --env-manager local` in this environment (nothing is installed or
downloaded), with this environment's scripts folder first on PATH: MLflow starts `uvicorn`
by name, so `.venv/bin/cxrdet serve` works without activating the venv. The store is the
project's (MLFLOW_TRACKING_URI overrides it). Clients send images as base64 bytes; the
`path` input column is refused unless --path-root (or CXRDET_SERVE_PATH_ROOT) allows the
regular files below one directory (cxrdet.serving.path_root).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from cxrdet.commands.arguments import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "serve", "serve a registered ensemble over HTTP (MLflow)", __doc__, run
    )
    parser.add_argument(
        "--model", "-m", required=True, help="models:/<name>@<alias>, runs:/..., or a model folder"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", "-p", type=int, default=5001)
    parser.add_argument("--workers", "-w", type=int, default=1, help="server processes")
    parser.add_argument(
        "--path-root",
        type=Path,
        help="allow the `path` input column, for regular files below this folder only",
    )


def run(args: argparse.Namespace) -> NoReturn:
    import os
    import sys

    from cxrdet.paths import project_root
    from cxrdet.serving.path_root import ENV, configured_root
    from cxrdet.serving.server import serve_command, serve_env
    from cxrdet.tracking.store import configure

    if args.path_root is not None:
        os.environ[ENV] = str(args.path_root)
    root = configured_root(None)  # --path-root, else CXRDET_SERVE_PATH_ROOT; a bad one: exit 2
    extra = {"MLFLOW_TRACKING_URI": configure(project_root())}
    if root is not None:
        extra[ENV] = str(root)
    print(
        f"serving {args.model} on http://{args.host}:{args.port}; `path` inputs: "
        + (f"regular files below {root}" if root else "off"),
        file=sys.stderr,
    )
    command = serve_command(args.model, args.host, args.port, args.workers)
    os.execve(command[0], command, serve_env(extra))  # the server takes over this process
