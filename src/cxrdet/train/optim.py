"""Optimizers and per-epoch learning-rate schedules from params."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from cxrdet.config import OptimParams, ScheduleParams

Scheduler = LRScheduler | ReduceLROnPlateau


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], optim: OptimParams
) -> torch.optim.Optimizer:
    trainable = [p for p in parameters if p.requires_grad]
    if optim.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(trainable, lr=optim.lr, momentum=0.9, weight_decay=optim.weight_decay)


def lr_factor(schedule: ScheduleParams, epochs: int) -> Callable[[int], float]:
    """Multiplier of the base lr for the epoch that follows `epoch` completed epochs."""
    warmup = schedule.warmup_epochs

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        after = epoch - warmup
        if schedule.name == "cosine":
            progress = min(1.0, after / max(1, epochs - warmup - 1))
            floor = schedule.min_lr_ratio
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule.name == "step":
            return schedule.gamma ** (after // schedule.step_epochs)
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimParams) -> Scheduler:
    schedule = optim.schedule
    if schedule.name == "plateau":
        # Driven by the monitored validation metric (higher is better), as the 2nd place did.
        return ReduceLROnPlateau(
            optimizer, mode="max", factor=schedule.gamma, patience=schedule.plateau_patience
        )
    return LambdaLR(optimizer, lr_factor(schedule, optim.epochs))


def step_scheduler(scheduler: Scheduler, score: float) -> None:
    if isinstance(scheduler, ReduceLROnPlateau):
        if not math.isnan(score):
            scheduler.step(score)
    else:
        scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
