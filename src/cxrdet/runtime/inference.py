"""Batched prediction over a dataset, sharded across DDP ranks and gathered to all of them.

Used for validation inside the training loop and for TTA prediction after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from cxrdet.config import TrainParams
from cxrdet.data.datasets import check_normalized
from cxrdet.runtime.device import amp_dtype, autocast, to_device
from cxrdet.runtime.distributed import DistContext, all_gather_objects, shard

PredictFn = Callable[[nn.Module, dict[str, Any]], Any]


def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    predict: PredictFn,
    *,
    batch_size: int,
    device: torch.device,
    runtime: TrainParams,
    context: DistContext,
    collate_fn: Callable | None = None,
    desc: str = "predict",
) -> list[Any]:
    """`predict(model, batch)` for every batch; every rank's outputs, rank by rank.

    Each rank takes a strided shard without padding, so every item is predicted exactly
    once (PITFALLS: validation must not drop or repeat images); outputs carry whatever
    index the caller needs to put them back in order.
    """
    loader = DataLoader(
        Subset(dataset, shard(len(dataset), context)),  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=runtime.workers,
        collate_fn=collate_fn,
    )
    dtype = amp_dtype(device, runtime.amp)
    was_training = model.training
    model.eval()
    outputs = []
    bar = tqdm(loader, desc=desc, leave=False, disable=not (runtime.progress and context.is_main))
    with torch.inference_mode():
        for number, batch in enumerate(bar):
            if number == 0:
                check_normalized(batch["image"])
            batch = to_device(batch, device, runtime.channels_last)
            with autocast(device, dtype):
                outputs.append(predict(model, batch))
    model.train(was_training)
    return [
        output for rank_outputs in all_gather_objects(outputs, context) for output in rank_outputs
    ]
