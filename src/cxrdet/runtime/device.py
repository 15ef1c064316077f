"""Device choice, mixed precision, memory format and moving batches to the device."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from cxrdet.errors import ConfigError


def select_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: CUDA when present, else CPU. Under torchrun each process takes its local GPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def set_cpu_threads(threads: int, processes: int = 1) -> int:
    """`threads` per process, or (0) the cores shared evenly between the processes."""
    count = threads or max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(count)
    return count


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """Mixed precision only on GPU: bf16 where supported (no loss scaling needed), else fp16."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def to_device(
    batch: Mapping[str, Any], device: torch.device, channels_last: bool
) -> dict[str, Any]:
    """Tensors of a batch dict to `device`; 4-D images in channels-last layout when asked."""
    moved: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved
