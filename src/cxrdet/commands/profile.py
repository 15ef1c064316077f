"""`cxrdet profile`: merge a profile (e.g. profiles/rsna-gpu.yaml) over params.yaml.

The merge keeps params.yaml's comments and order (ruamel round trip) and validates the
result before writing; `git checkout params.yaml` returns to the demo profile.
A dataset set to null in the profile (e.g. `data: {pretrain: null}`) is removed: dvc.yaml's
`prepare` runs one stage per entry of `data` and cannot skip a null one.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("profile", help="switch params.yaml to another profile")
    actions = parser.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="merge PROFILE over params.yaml and validate")
    apply.add_argument("profile", type=Path, help="a YAML file such as profiles/rsna-gpu.yaml")
    apply.add_argument("--params", type=Path, default=Path("params.yaml"))
    apply.add_argument("--dry-run", action="store_true", help="print the result, write nothing")
    apply.set_defaults(run=run_apply)


def merge_into(target: Any, override: dict[str, Any]) -> None:
    """Recursive in-place merge that keeps the target's comments and key order."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_into(target[key], value)
        else:
            target[key] = value


def run_apply(args: argparse.Namespace) -> int:
    import yaml as pyyaml
    from ruamel.yaml import YAML

    from cxrdet.config import read_yaml, validate_params
    from cxrdet.io import atomic_path

    override = read_yaml(args.profile)
    yaml = YAML()
    yaml.preserve_quotes = True
    document = yaml.load(args.params.read_text())
    merge_into(document, override)
    datasets = document.get("data")
    for name in [key for key, value in (datasets or {}).items() if value is None]:
        del datasets[name]
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    text = buffer.getvalue()
    validate_params(pyyaml.safe_load(text), source=f"{args.params} + {args.profile}")
    if args.dry_run:
        print(text, end="")
        return 0
    with atomic_path(args.params) as partial:
        partial.write_text(text)
    print(f"{args.params}: merged {args.profile}; `git diff {args.params}` shows the change")
    return 0
