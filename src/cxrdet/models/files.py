"""Model files: a state_dict plus the plain config that rebuilds the module.

Never a pickled module: everything saved here loads with `torch.load(weights_only=True)`,
so a model file cannot run code, and it survives refactors of the classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cxrdet.errors import CxrdetError
from cxrdet.io import atomic_path


def save_torch(content: dict[str, Any], path: Path) -> None:
    """Write then rename: a run killed mid-save keeps the previous file."""
    with atomic_path(path) as partial:
        torch.save(content, partial)


def load_torch(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise CxrdetError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise CxrdetError(f"{path}: not a readable weights file ({error})") from None


def save_model_file(
    path: Path, kind: str, state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> None:
    """`kind` says what `config` rebuilds ('backbone', 'classifier', ...)."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    save_torch({"kind": kind, "config": config, "state_dict": tensors}, path)


def load_model_file(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config) of a file that `save_model_file` wrote with this `kind`."""
    content = load_torch(path)
    if not isinstance(content, dict) or content.get("kind") != kind:
        found = content.get("kind") if isinstance(content, dict) else type(content).__name__
        raise CxrdetError(f"{path}: expected a cxrdet {kind} file, found {found!r}")
    return content["state_dict"], content["config"]


def model_file_kind(path: Path) -> str:
    """The `kind` a cxrdet model file was saved with (what `config` rebuilds)."""
    content = load_torch(path)
    if not isinstance(content, dict) or not isinstance(content.get("kind"), str):
        raise CxrdetError(f"{path}: not a cxrdet model file (no kind)")
    return content["kind"]
