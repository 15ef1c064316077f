"""The one training loop: every model in the project trains through `fit`.

A model plugs in through a `Task` (its loss, its per-batch prediction and the scores
of the gathered predictions). `fit` owns everything else: device, mixed precision,
channels-last, DDP, gradient clipping, per-epoch validation and learning-rate
schedule, early stopping, `last`/`best` checkpoints with resume, progress and
per-epoch metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from cxrdet.config import OptimParams, TrainParams
from cxrdet.data.augment import derive_seed
from cxrdet.data.datasets import check_normalized
from cxrdet.errors import CxrdetError
from cxrdet.runtime.device import amp_dtype, autocast, to_device
from cxrdet.runtime.distributed import DistContext, all_gather_objects, barrier, unwrap, wrap_ddp
from cxrdet.runtime.inference import predict_dataset
from cxrdet.runtime.seed import rng_state, set_rng_state
from cxrdet.train.checkpoint import (
    LAST,
    load_best,
    read_resumable,
    remove_checkpoints,
    save_best,
    save_last,
)
from cxrdet.train.optim import build_optimizer, build_scheduler, current_lr, step_scheduler

LogFn = Callable[[dict[str, float], int], None]


class Task(Protocol):
    """What a model contributes to the loop. `monitor` names the score (higher is better)
    that picks the best epoch, drives early stopping and the plateau schedule. A task may
    also define `start_epoch(model, epoch)`, called before each training epoch (e.g. to
    freeze the encoder for the first epochs)."""

    monitor: str

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor: ...

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> Any: ...

    def score(self, outputs: list[Any]) -> dict[str, float]: ...


@dataclass
class FitResult:
    best_epoch: int  # 1-based; 0 when no epoch had a finite score (the last weights are kept)
    best_score: float
    epochs: int  # epochs trained, resumed ones included
    stopped_early: bool
    resumed_from: int  # epochs already done when this call started (0: a fresh run)
    history: list[dict[str, float]] = field(default_factory=list)


def run_fingerprint(identity: dict[str, Any], optim: OptimParams) -> str:
    """What a checkpoint must match to be resumed: the caller's identity plus optimisation."""
    text = json.dumps(
        {"identity": identity, "optim": optim.model_dump()}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit(
    model: nn.Module,
    task: Task,
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    optim: OptimParams,
    runtime: TrainParams,
    device: torch.device,
    checkpoint_dir: Path,
    identity: dict[str, Any],
    context: DistContext = DistContext(),
    log: LogFn | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    collate_fn: Callable | None = None,
    desc: str = "train",
) -> FitResult:
    """Train `model` in place; on return it holds the best epoch's weights.

    `val_set` None: no validation (a final model on every training image): no best epoch
    (`best_epoch` 0), no early stopping, a plateau schedule never steps; the last epoch's
    weights are kept.

    Resumes from `checkpoint_dir/last.pt` when it was written for the same `identity` and
    optimisation params; a run that had finished returns at once with its best weights.
    Only rank 0 writes checkpoints and calls `log` (step = epoch, 1-based);
    `on_epoch_end(epoch, metrics)` runs on every rank (e.g. Optuna pruning).
    """
    checkpoint_dir = Path(checkpoint_dir)
    fingerprint = run_fingerprint(identity, optim)
    dtype = amp_dtype(device, runtime.amp)
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    trained = wrap_ddp(model, device, context)
    optimizer = build_optimizer(model.parameters(), optim)
    scheduler = build_scheduler(optimizer, optim)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    result = FitResult(
        best_epoch=0, best_score=-math.inf, epochs=0, stopped_early=False, resumed_from=0
    )
    bad_epochs = 0

    state = read_resumable(checkpoint_dir, fingerprint)
    barrier(context)  # every rank has looked before rank 0 clears a stale checkpoint
    if state is None and context.is_main:
        remove_checkpoints(checkpoint_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ranks = state["rng"]
        set_rng_state(ranks[context.rank % len(ranks)])
        result = FitResult(**state["result"])
        result.resumed_from = result.epochs
        bad_epochs = state["bad_epochs"]
        if context.is_main:
            done = "finished" if state["finished"] else f"{result.epochs}/{optim.epochs} epochs"
            tqdm.write(f"{desc}: resuming from {checkpoint_dir / LAST} ({done})")
        if state["finished"]:
            return _with_best_weights(model, result, checkpoint_dir, context)

    world = context.world_size
    per_rank_batch = max(1, optim.batch_size // world)
    sampler = DistributedSampler(
        train_set, num_replicas=world, rank=context.rank, shuffle=True, seed=optim.seed
    )
    # A last batch of one image breaks BatchNorm; shuffled epochs still see every image.
    drop_last = len(sampler) > per_rank_batch
    for epoch in range(result.epochs, optim.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        loader = DataLoader(
            train_set,
            batch_size=per_rank_batch,
            sampler=sampler,
            num_workers=runtime.workers,
            collate_fn=collate_fn,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(derive_seed(optim.seed, epoch)),
        )
        if hasattr(task, "start_epoch"):
            task.start_epoch(model, epoch)
        lr = current_lr(optimizer)
        train_loss, data_time = _train_epoch(
            trained,
            task,
            loader,
            optimizer,
            scaler,
            optim,
            runtime,
            device,
            dtype,
            context,
            desc=f"{desc} {epoch + 1}/{optim.epochs}",
            check_inputs=epoch == result.epochs,
        )
        if val_set is None:
            scores: dict[str, float] = {}
            score = math.nan
        else:
            outputs = predict_dataset(
                model,
                val_set,
                task.predict,
                batch_size=per_rank_batch,
                device=device,
                runtime=runtime,
                context=context,
                collate_fn=collate_fn,
                desc=f"{desc} validate",
            )
            scores = task.score(outputs)
            score = float(scores[task.monitor])
        step_scheduler(scheduler, score)

        result.epochs = epoch + 1
        if score > result.best_score:  # NaN never improves
            result.best_score, result.best_epoch, bad_epochs = score, epoch + 1, 0
            if context.is_main:
                save_best(checkpoint_dir, model, epoch + 1, score)
        else:
            bad_epochs += 1
        stoppable = bool(optim.patience) and val_set is not None
        result.stopped_early = stoppable and bad_epochs >= optim.patience
        metrics = {
            "train_loss": train_loss,
            **{f"val_{name}": float(value) for name, value in scores.items()},
            "lr": lr,
            "epoch_time": time.perf_counter() - started,
            "data_time": data_time,
        }
        result.history.append(metrics)
        finished = result.stopped_early or result.epochs == optim.epochs
        rng = all_gather_objects(rng_state(), context)
        if context.is_main:
            save_last(
                checkpoint_dir,
                {
                    "fingerprint": fingerprint,
                    "finished": finished,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng,
                    "bad_epochs": bad_epochs,
                    "result": {**asdict(result), "resumed_from": 0},
                },
            )
            if log is not None:
                log(metrics, epoch + 1)
            # Per-label scores (`auc.<label>`) go to MLflow only: the line stays readable.
            shown = " ".join(
                f"{k} {v:.4g}"
                for k, v in metrics.items()
                if "." not in k and not k.endswith("_time")
            )
            tqdm.write(
                f"{desc} epoch {epoch + 1}/{optim.epochs}: {shown} ({metrics['epoch_time']:.1f} s)"
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
        if result.stopped_early:
            break
    return _with_best_weights(model, result, checkpoint_dir, context)


def _train_epoch(
    model: nn.Module,
    task: Task,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    optim: OptimParams,
    runtime: TrainParams,
    device: torch.device,
    dtype: torch.dtype | None,
    context: DistContext,
    desc: str,
    check_inputs: bool,
) -> tuple[float, float]:
    """One pass over the loader: (mean loss over all ranks, seconds spent waiting for data)."""
    model.train()
    total, count, data_time = 0.0, 0, 0.0
    bar = tqdm(loader, desc=desc, leave=False, disable=not (runtime.progress and context.is_main))
    waited = time.perf_counter()
    for batch in bar:
        data_time += time.perf_counter() - waited
        if check_inputs and count == 0:
            check_normalized(batch["image"])
        batch = to_device(batch, device, runtime.channels_last)
        with autocast(device, dtype):
            loss = task.loss(model, batch)
        if not torch.isfinite(loss):
            raise CxrdetError(
                f"{desc}: the loss is {loss.item()}; lower the learning rate or enable clipping"
            )
        scaler.scale(loss).backward()
        if optim.clip_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        total, count = total + loss.item(), count + 1
        bar.set_postfix(loss=f"{total / count:.4f}")
        waited = time.perf_counter()
    sums = all_gather_objects((total, count), context)
    seen = sum(n for _, n in sums)
    return (sum(s for s, _ in sums) / seen if seen else math.nan), data_time


def _with_best_weights(
    model: nn.Module, result: FitResult, checkpoint_dir: Path, context: DistContext
) -> FitResult:
    barrier(context)  # rank 0 may still be writing best.pt
    if result.best_epoch:
        load_best(checkpoint_dir, unwrap(model))
    return result
