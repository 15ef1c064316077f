"""How long each pipeline stage took, read back from the stages' MLflow runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrdet.tracking.store import configure

STAGE_TAG = "tags.cxrdet.stage"
PARENT_TAG = "tags.mlflow.parentRunId"  # set on nested runs (classifier variants, Optuna trials)


def stage_timings(
    root: Path, experiment: str, since_ms: int, tracking_uri: str | None = None
) -> pd.DataFrame:
    """One row per stage run started at or after `since_ms` (epoch milliseconds), in start
    order: run (its name, e.g. train_detector@0), stage, status, seconds."""
    import mlflow

    configure(root, tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"attributes.start_time >= {int(since_ms)}",
        order_by=["attributes.start_time ASC"],
    )
    columns = ["run", "stage", "status", "seconds"]
    if runs.empty or STAGE_TAG not in runs:
        return pd.DataFrame(columns=columns)
    top = runs[runs[STAGE_TAG].notna()]
    if PARENT_TAG in top:
        top = top[top[PARENT_TAG].isna()]
    seconds = (top["end_time"] - top["start_time"]).dt.total_seconds()
    return pd.DataFrame(
        {
            "run": top["tags.mlflow.runName"],
            "stage": top[STAGE_TAG],
            "status": top["status"],
            "seconds": seconds,
        }
    ).reset_index(drop=True)


def format_timings(timings: pd.DataFrame, wall: float | None = None) -> str:
    """A plain-text table with the sum of the stages' times; with `wall` (the whole run's
    seconds), also what the run cost beyond its stages' own work, as a ratio."""
    if timings.empty:
        return "no stage ran (every stage was up to date)"
    width = max(len("stage run"), *(len(name) for name in timings["run"]))
    lines = [f"{'stage run':<{width}}  {'seconds':>8}  status"]
    for row in timings.itertuples():
        seconds = "running" if pd.isna(row.seconds) else f"{row.seconds:8.1f}"
        lines.append(f"{row.run:<{width}}  {seconds:>8}  {row.status}")
    total = timings["seconds"].sum()
    lines.append(f"{'sum':<{width}}  {total:8.1f}")
    if wall is not None and total > 0:
        lines.append(
            f"wall time {wall:.0f} s = {wall / total:.2f}x the stages' own time (the rest: "
            "Python start-up and imports of each stage process, DVC's hashing between stages)"
        )
    return "\n".join(lines)
