"""The training loop: learning, checkpoints and resume, early stopping, schedules, input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrdet.config import OptimParams, ScheduleParams, TrainParams
from cxrdet.data.augment import classifier_augmentation
from cxrdet.data.datasets import CachedImages, ClassificationDataset, normalize, read_prepared
from cxrdet.errors import CxrdetError
from cxrdet.models.classifier import build_classifier
from cxrdet.runtime.seed import configure_determinism, seed_everything
from cxrdet.train.checkpoint import BEST, LAST
from cxrdet.train.classifier import classification_targets
from cxrdet.train.loop import fit
from cxrdet.train.optim import lr_factor
from cxrdet.train.tasks import SingleLabelTask, balanced_class_weights

pytest_plugins = ["prepared_demo"]

RUNTIME = TrainParams(progress=False)
CPU = torch.device("cpu")


class Killed(Exception):
    """Stands in for the stage being killed after an epoch's checkpoint was written."""


def opacity_datasets(
    root: Path, augment: bool
) -> tuple[ClassificationDataset, ClassificationDataset, SingleLabelTask]:
    prepared = read_prepared(root / "data/prepared/detect")
    split = pd.read_parquet(root / "data/split/folds.parquet")
    targets = classification_targets(prepared, "opacity", "test")
    train_ids = split.loc[split["fold"] > 0, "image_id"].to_numpy()
    val_ids = split.loc[split["fold"] == 0, "image_id"].to_numpy()
    labels = targets.labels.loc[train_ids].to_numpy()
    train = ClassificationDataset(
        CachedImages(prepared, train_ids),
        labels,
        64,
        classifier_augmentation() if augment else None,
        seed=3,
    )
    val = ClassificationDataset(
        CachedImages(prepared, val_ids), targets.labels.loc[val_ids].to_numpy(), 64
    )
    return train, val, SingleLabelTask([1], balanced_class_weights(labels, 2))


def timm_classifier(seed: int = 0) -> nn.Module:
    configure_determinism(True)
    seed_everything(seed)
    return build_classifier("test_resnet", 2, drop_rate=0.2)


def test_few_steps_on_synthetic_data_lower_the_loss(prepared_root, tmp_path):
    train, val, task = opacity_datasets(prepared_root, augment=False)
    optim = OptimParams(epochs=4, batch_size=8, lr=2e-3, schedule=ScheduleParams(name="constant"))
    result = fit(
        timm_classifier(),
        task,
        train,
        val,
        optim=optim,
        runtime=RUNTIME,
        device=CPU,
        checkpoint_dir=tmp_path,
        identity={"test": 1},
    )
    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert {"val_auc", "val_loss", "val_accuracy", "lr", "epoch_time", "data_time"} <= set(
        result.history[0]
    )


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(prepared_root, tmp_path):
    train, val, task = opacity_datasets(prepared_root, augment=True)
    optim = OptimParams(
        epochs=3,
        batch_size=8,
        clip_grad_norm=1.0,
        schedule=ScheduleParams(name="cosine", warmup_epochs=1),
    )
    kwargs = dict(optim=optim, runtime=RUNTIME, device=CPU, identity={"test": 2})

    whole = fit(timm_classifier(), task, train, val, checkpoint_dir=tmp_path / "whole", **kwargs)

    def kill_after_first(epoch: int, metrics: dict) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(
            timm_classifier(),
            task,
            train,
            val,
            checkpoint_dir=tmp_path / "killed",
            on_epoch_end=kill_after_first,
            **kwargs,
        )
    resumed = fit(
        timm_classifier(seed=99), task, train, val, checkpoint_dir=tmp_path / "killed", **kwargs
    )

    assert resumed.resumed_from == 1 and resumed.epochs == whole.epochs == 3
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    for name in (LAST, BEST):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)
        b = torch.load(tmp_path / "killed" / name, weights_only=True)
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (name, key)
    a, b = (torch.load(tmp_path / d / LAST, weights_only=True) for d in ("whole", "killed"))
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert a["scheduler"] == b["scheduler"] and a["finished"] and b["finished"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(images).mean(dim=(2, 3)))


class Noise(torch.utils.data.Dataset):
    """Random normalised images with random labels: nothing to learn."""

    def __init__(self, count: int, scale: float = 1.0) -> None:
        rng = np.random.default_rng(count)
        self.images = rng.integers(0, 256, (count, 16, 16), dtype=np.uint8)
        self.targets = torch.tensor(rng.integers(0, 2, count))
        self.scale = scale

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": normalize(self.images[index]) * self.scale,
            "target": self.targets[index],
            "index": index,
        }


class NeverBetter(SingleLabelTask):
    def score(self, outputs: list) -> dict[str, float]:
        return {**super().score(outputs), "auc": 0.5}


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    optim = OptimParams(epochs=10, batch_size=8, patience=2)
    result = fit(
        Tiny(),
        NeverBetter([1]),
        Noise(32),
        Noise(16),
        optim=optim,
        runtime=RUNTIME,
        device=CPU,
        checkpoint_dir=tmp_path,
        identity={},
    )
    assert result.stopped_early and result.epochs == 3 and result.best_epoch == 1


def test_finished_run_returns_its_best_weights_and_changed_params_start_afresh(tmp_path):
    logged: list[int] = []
    optim = OptimParams(epochs=2, batch_size=8)
    first = fit(
        Tiny(),
        SingleLabelTask([1]),
        Noise(32),
        Noise(16),
        optim=optim,
        runtime=RUNTIME,
        device=CPU,
        checkpoint_dir=tmp_path,
        identity={"run": 1},
    )
    again = fit(
        Tiny(),
        SingleLabelTask([1]),
        Noise(32),
        Noise(16),
        optim=optim,
        runtime=RUNTIME,
        device=CPU,
        checkpoint_dir=tmp_path,
        identity={"run": 1},
        log=lambda m, step: logged.append(step),
    )
    assert again.resumed_from == 2 and again.history == first.history and logged == []
    changed = fit(
        Tiny(),
        SingleLabelTask([1]),
        Noise(32),
        Noise(16),
        optim=optim,
        runtime=RUNTIME,
        device=CPU,
        checkpoint_dir=tmp_path,
        identity={"run": 2},
        log=lambda m, step: logged.append(step),
    )
    assert changed.resumed_from == 0 and logged == [1, 2]


def test_without_validation_the_last_epoch_is_kept_and_nothing_stops_early(tmp_path):
    """val_set None (a final model on every training image): every epoch runs despite the
    patience, no best checkpoint, the last epoch's weights; a finished run resumes to them."""
    optim = OptimParams(epochs=3, batch_size=8, patience=1, schedule=ScheduleParams(name="plateau"))
    kwargs = dict(
        optim=optim, runtime=RUNTIME, device=CPU, checkpoint_dir=tmp_path, identity={"final": 1}
    )
    model = Tiny()
    result = fit(model, SingleLabelTask([1]), Noise(32), None, **kwargs)
    assert result.epochs == 3 and not result.stopped_early and result.best_epoch == 0
    assert not (tmp_path / BEST).exists() and all(
        not any(k.startswith("val_") for k in h) for h in result.history
    )
    last = torch.load(tmp_path / LAST, weights_only=True)
    assert last["finished"] and all(
        torch.equal(v, last["model"][k]) for k, v in model.state_dict().items()
    )
    again = Tiny()
    resumed = fit(again, SingleLabelTask([1]), Noise(32), None, **kwargs)
    assert resumed.resumed_from == 3 and all(
        torch.equal(v, last["model"][k]) for k, v in again.state_dict().items()
    )


def test_first_batch_outside_the_normalised_range_is_refused(tmp_path):
    with pytest.raises(CxrdetError, match="normalised range"):
        fit(
            Tiny(),
            SingleLabelTask([1]),
            Noise(16, scale=10.0),
            Noise(8),
            optim=OptimParams(epochs=1, batch_size=8),
            runtime=RUNTIME,
            device=CPU,
            checkpoint_dir=tmp_path,
            identity={},
        )


def test_schedules_warm_up_then_decay():
    cosine = lr_factor(ScheduleParams(name="cosine", warmup_epochs=2, min_lr_ratio=0.1), epochs=7)
    assert [round(cosine(e), 3) for e in range(7)] == [0.333, 0.667, 1.0, 0.868, 0.55, 0.232, 0.1]
    step = lr_factor(ScheduleParams(name="step", step_epochs=2, gamma=0.5), epochs=6)
    assert [step(e) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
