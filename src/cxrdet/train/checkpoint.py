"""Training-state checkpoints: `last.pt` and `best.pt` in a run's checkpoint folder.

`last` holds the model, optimizer, scheduler, loss scaler, every rank's RNG state, the
loop's counters and the run's fingerprint, so a killed run resumes where it stopped and
a changed one starts afresh; `best` holds the weights of the best validation epoch.
Tensors and plain values only: both load with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from cxrdet.models.files import load_torch, save_torch

LAST = "last.pt"
BEST = "best.pt"


def save_last(checkpoint_dir: Path, state: dict[str, Any]) -> None:
    """`state`: fingerprint, finished, model, optimizer, scheduler, scaler, rng, counters."""
    save_torch(state, checkpoint_dir / LAST)


def save_best(checkpoint_dir: Path, model: nn.Module, epoch: int, score: float) -> None:
    save_torch({"model": model.state_dict(), "epoch": epoch, "score": score}, checkpoint_dir / BEST)


def load_best(checkpoint_dir: Path, model: nn.Module) -> None:
    model.load_state_dict(load_torch(checkpoint_dir / BEST)["model"])


def read_resumable(checkpoint_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """`last` when it was written by a run with this fingerprint, else None."""
    path = checkpoint_dir / LAST
    if not path.exists():
        return None
    state = load_torch(path)
    if state.get("fingerprint") == fingerprint:
        return state
    tqdm.write(f"{path}: written for other params or data; starting afresh")
    return None


def remove_checkpoints(checkpoint_dir: Path) -> None:
    for name in (LAST, BEST):
        (checkpoint_dir / name).unlink(missing_ok=True)
