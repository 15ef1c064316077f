"""Classifier tasks for the training loop: loss, per-batch prediction, validation scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrdet.metrics.classification import binary_metrics

EPS = 1e-7  # keeps log() finite when a validation loss is computed from probabilities


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """n / (k * n_c): every class contributes equally to the loss (1st place: class-weighted)."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(targets) / (num_classes * np.maximum(counts, 1.0)), dtype=torch.float32)


def _gather(outputs: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Batch outputs concatenated and put in dataset order (DDP shards interleave)."""
    joined = {key: torch.cat([batch[key] for batch in outputs]).numpy() for key in outputs[0]}
    order = np.argsort(joined["index"], kind="stable")
    return {key: value[order] for key, value in joined.items()}


class SingleLabelTask:
    """Softmax over classes, (class-weighted) cross-entropy. Scores the AUC of
    P(positive) = summed probability of the `positive` classes (opacity vs not)."""

    monitor = "auc"

    def __init__(self, positive: Sequence[int], class_weights: torch.Tensor | None = None) -> None:
        self.positive = list(positive)
        self.class_weights = class_weights

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        logits = model(batch["image"]).float()
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits, batch["target"], weight=weight)

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        probs = model(batch["image"]).float().softmax(dim=1)
        return {
            "index": batch["index"].cpu(),
            "probs": probs.cpu(),
            "target": batch["target"].cpu(),
        }

    def score(self, outputs: list[Any]) -> dict[str, float]:
        joined = _gather(outputs)
        probs, target = joined["probs"], joined["target"]
        weight = (
            np.ones(probs.shape[1]) if self.class_weights is None else self.class_weights.numpy()
        )
        picked = np.log(np.clip(probs[np.arange(len(target)), target], EPS, 1.0))
        positive = np.isin(target, self.positive)
        return {
            "auc": binary_metrics(positive, probs[:, self.positive].sum(axis=1)).roc_auc,
            "loss": float(-(weight[target] * picked).sum() / weight[target].sum()),
            "accuracy": float((probs.argmax(axis=1) == target).mean()),
        }


class MultiLabelTask:
    """Independent sigmoid outputs (NIH: 14 findings + abnormal), binary cross-entropy.
    Scores each label's AUC and their mean over labels where it is defined."""

    monitor = "mean_auc"

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            model(batch["image"]).float(), batch["target"].float()
        )

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        probs = model(batch["image"]).float().sigmoid()
        return {
            "index": batch["index"].cpu(),
            "probs": probs.cpu(),
            "target": batch["target"].cpu(),
        }

    def score(self, outputs: list[Any]) -> dict[str, float]:
        joined = _gather(outputs)
        probs, target = np.clip(joined["probs"], EPS, 1 - EPS), joined["target"].astype(bool)
        aucs = {
            name: binary_metrics(target[:, k], probs[:, k]).roc_auc
            for k, name in enumerate(self.names)
        }
        defined = [auc for auc in aucs.values() if not np.isnan(auc)]
        bce = -(target * np.log(probs) + ~target * np.log(1 - probs)).mean()
        return {
            "mean_auc": float(np.mean(defined)) if defined else float("nan"),
            "loss": float(bce),
            **{f"auc.{name}": auc for name, auc in aucs.items()},
        }
