"""Where and how a training stage runs: device, DDP process group, threads, determinism."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from cxrdet.config import TrainParams
from cxrdet.runtime.device import select_device, set_cpu_threads
from cxrdet.runtime.distributed import DistContext, close_distributed, init_distributed
from cxrdet.runtime.seed import configure_determinism


@dataclass(frozen=True)
class Runtime:
    params: TrainParams
    device: torch.device
    context: DistContext


def start_runtime(params: TrainParams) -> Runtime:
    """Join torchrun's process group when launched by it; pick this process's device."""
    context = init_distributed(select_device(params.device).type)
    device = select_device(params.device, context.local_rank)
    set_cpu_threads(params.threads, processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    configure_determinism(params.deterministic)
    return Runtime(params, device, context)


def stop_runtime() -> None:
    close_distributed()
