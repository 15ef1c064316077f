"""DistributedDataParallel when launched with `torchrun`, a single process otherwise.

Only rank 0 logs to MLflow and writes outputs; every rank computes the same validation
scores (predictions are gathered to all ranks), so early stopping and best-checkpoint
decisions agree without extra communication.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> DistContext:
    """Join the torchrun process group (NCCL on GPU, gloo on CPU); a no-op otherwise."""
    if not launched_by_torchrun():
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    context = DistContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    return context


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.distributed:
        dist.barrier()


def all_gather_objects(item: Any, context: DistContext) -> list[Any]:
    """Every rank's `item`, in rank order, on every rank."""
    if not context.distributed:
        return [item]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, item)
    return gathered


def shard(length: int, context: DistContext) -> list[int]:
    """This rank's indices of 0..length-1 for inference: strided, nothing padded or dropped."""
    return list(range(context.rank, length, context.world_size))


def wrap_ddp(model: nn.Module, device: torch.device, context: DistContext) -> nn.Module:
    if not context.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, without its DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
