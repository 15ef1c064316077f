"""`cxrdet registry`: the ensemble's versions in the MLflow model registry.

    cxrdet registry list                  versions, aliases, holdout metrics, identity
    cxrdet registry promote --version 3   champion -> version 3, if it beats the champion
                                          by register.min_delta on the same holdout
    cxrdet registry promote --version 3 --force
    cxrdet registry rollback              champion -> the version that held it before

The model is params' register.model_name for the detection data (e.g. cxrdet-rsna) unless
--name says otherwise; the store is the project's (or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import argparse
from typing import Any

from cxrdet.commands.arguments import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="list, promote or roll back the registered ensemble's versions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = add_command(actions, "list", "versions, aliases and holdout metrics", None, run_list)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    promote = add_command(
        actions,
        "promote",
        "move alias champion to a version (with the gate's checks)",
        None,
        run_promote,
    )
    promote.add_argument(
        "--version", required=True, type=version_number, help="the version to promote (1, 2, ...)"
    )
    promote.add_argument(
        "--force", action="store_true", help="skip the checks (metric, holdout, min_delta)"
    )
    promote.add_argument("--min-delta", type=float, help="default: params' register.min_delta")
    rollback = add_command(
        actions, "rollback", "move alias champion back to the previous champion", None, run_rollback
    )
    for action in (listing, promote, rollback):
        action.add_argument(
            "--name", help="registered model (default: params' register.model_name for the data)"
        )


def version_number(text: str) -> str:
    """A registry version as MLflow numbers them; anything else is a usage error (exit 2)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (1, 2, ...)")
    return str(int(text))


def model_name(args: argparse.Namespace) -> tuple[str, Any]:
    """(the model's name, the project's params), with MLflow pointed at the project's store."""
    from cxrdet.config import load_params
    from cxrdet.paths import project_root
    from cxrdet.tracking.store import configure

    root = project_root()
    params = load_params(root / "params.yaml")
    configure(root, params.tracking.tracking_uri)
    return args.name or params.register.name_for(params.data.detect.format), params


def run_list(args: argparse.Namespace) -> int:
    import json

    from cxrdet.tracking.registry import list_versions

    name, _ = model_name(args)
    rows = list_versions(name)
    print(
        json.dumps({"name": name, "versions": rows}, indent=2) if args.json else table(name, rows)
    )
    return 0


def table(name: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{name}: {len(rows)} versions",
        f"{'version':>7}  {'aliases':<21} {'metric':<11} {'score':>7} "
        f"{'auc':>6}  {'created':<16}  {'holdout':<16}  {'commit':<8}  gate",
    ]
    for row in rows:
        auc = row["metrics"].get("auc")
        score = "n/a" if row["score"] is None else f"{row['score']:.4f}"
        lines.append(
            f"{row['version']:>7}  {','.join(row['aliases']) or '-':<21} "
            f"{row['metric'] or '-':<11} {score:>7} "
            f"{'n/a' if auc is None else f'{auc:.3f}':>6}  {row['created']:<16}  "
            f"{row['tags'].get('cxrdet.holdout_hash', '-'):<16}  "
            f"{row['tags'].get('cxrdet.git_commit', '-')[:8]:<8}  "
            f"{row['gate'] or '-'}"
        )
    return "\n".join(lines)


def run_promote(args: argparse.Namespace) -> int:
    from cxrdet.tracking.registry import promote

    name, params = model_name(args)
    min_delta = params.register.min_delta if args.min_delta is None else args.min_delta
    decision = promote(name, args.version, min_delta, force=args.force)
    verdict = (
        f"version {args.version} is now champion" if decision.promote else "champion unchanged"
    )
    print(f"{name}: {verdict}: {decision.reason}")
    return 0 if decision.promote else 1


def run_rollback(args: argparse.Namespace) -> int:
    from cxrdet.tracking.registry import rollback

    name, _ = model_name(args)
    before, after = rollback(name)
    print(f"{name}: champion version {before} -> {after}")
    return 0
