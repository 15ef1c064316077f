"""The progress bar each format writer shows."""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int, name: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=f"synthesize {name}", unit="img", disable=not enabled)
