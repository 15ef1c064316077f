"""The one naming scheme of MLflow metrics (README, "MLflow"): dotted paths

    [<model>.]<scope>.<quantity>[.<class>]

scope: what the number was measured on or what it qualifies: train, val (the epoch's
validation images, step = epoch), oof (out of fold), holdout, best, untuned, configured;
counts and timings have none. Code names its values with underscores (`holdout_auc`,
`best_val_rsna`: the keys of the stages' metrics.json); `metric_key` turns a leading scope
word into a path part, so `holdout_auc` (a fold stage) and `holdout.auc` (evaluate) are one
column in the runs table. Parts keep only letters, digits, `_` and `-`: MLflow's chart view
groups metrics by what precedes a '/', and a class such as "No Lung Opacity / Not Normal"
would open empty sections.
"""

from __future__ import annotations

import re

SCOPES = ("train", "val", "oof", "holdout", "best", "untuned", "configured")
_UNSAFE = re.compile(r"[^0-9A-Za-z_\-]+")


def sanitize(part: str) -> str:
    """One path part: runs of other characters become one `_` ("No Lung Opacity / Not
    Normal" -> "No_Lung_Opacity_Not_Normal")."""
    return _UNSAFE.sub("_", part).strip("_") or "_"


def metric_key(name: str) -> str:
    """`name` (dotted, scope words joined by underscores) in the project's scheme."""
    parts: list[str] = []
    for part in name.split("."):
        part = sanitize(part)
        while (scope := part.split("_", 1)[0]) in SCOPES and "_" in part:
            parts.append(scope)
            part = part[len(scope) + 1 :]
        parts.append(part)
    return ".".join(parts)
