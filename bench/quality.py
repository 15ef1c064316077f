"""Detection quality on real chest X-rays: cxrdet's detector recipe against torchvision's stock
detectors trained with the same backbone, image size and compute budget on this machine.

Data: ../shared/data/nih-bbox (980 NIH ChestX-ray14 radiographs, 984 radiologist boxes of 8
findings, 100 normals; `--data` or $CXRDET_NIH_BBOX elsewhere), prepared by cxrdet's `folder`
source into a temporary cache. Split by patient: a held-out part (20%) that no training,
epoch choice or threshold choice sees; a validation part (10% of the rest) that picks the
best epoch and the RSNA-style score's threshold, the same for every system.

Systems (each gets `--budget` CPU-seconds of training: its epochs = budget / its own measured
CPU-seconds per epoch, so a slower model trains fewer epochs; CPU time, summed over threads,
because the wall time of a shared machine swings with its load; each system trains on one thread,
the two sides of a pair side by side):
  stock RetinaNet   torchvision's RetinaNet on the timm backbone + torchvision FPN (P3-P7),
                    its standard anchors (32-512 px x 3 scales x 3 ratios), heads and
                    decoding; horizontal flips only; no TTA.
  ours              cxrdet's RetinaNet with the recipe below (RECIPE, or `--set key=value`
                    over it), its augmentation, TTA views fused by the ensemble's view fusion.
  stock Faster R-CNN / ours two-stage (full mode, or `--families two_stage`): the same
                    pairing for the 1st place's two-stage family.
Both sides of a pair share the optimiser settings (AdamW, the recipe's lr, cosine schedule).

Prints, per system, VOC mAP at IoU 0.4 per class and over the classes on the held-out
images, the RSNA-style score (threshold from validation; and the optimistic best threshold on
the held-out part, as the challenge's leaderboard-probing did), and ours / stock ratios.

    python bench/quality.py [--quick] [--json OUT] [--budget CPU_S] [--size PX]
                            [--families retinanet ...] [--set detector.p2=false ...]
                            [--jobs N] [--seed N]
    python bench/quality.py --ablations [--budget S] [--json OUT]   # one row per recipe change

`--quick` is the few-minute run the tests use (a subset, short budget, 128 px).
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torchvision.models.detection import FasterRCNN as StockFasterRCNN
from torchvision.models.detection import RetinaNet as StockRetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

from cxrdet.config import DetectorParams, TrainParams, deep_merge
from cxrdet.data.datasets import CachedImages, Prepared, read_prepared
from cxrdet.data.detection import DetectionDataset, collate_detection
from cxrdet.data.folds import HOLDOUT, make_folds
from cxrdet.data.prepare import PrepareOptions, prepare_dataset
from cxrdet.ensemble.recipe import EnsembleRecipe, Fusion, Gating, MemberPredictions, apply_recipe
from cxrdet.families.task import DetectionTask
from cxrdet.metrics import mean_average_precision, rsna_score
from cxrdet.metrics.detection import best_threshold, rsna_by_threshold
from cxrdet.models.retinanet import create_detector_backbone
from cxrdet.models.two_stage import FpnBody
from cxrdet.runtime.session import Runtime, start_runtime
from cxrdet.train.detector import detector_data, predict_detector, seeded_family, train_detector
from cxrdet.train.loop import fit

from common import Report, Row, arguments, emit
from detector import RATIOS, SCALES, TimmFpn

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CXRDET_NIH_BBOX", PROJECT.parent / "shared/data/nih-bbox"))
HOLDOUT_FRACTION = 0.2
VAL_FOLDS = 9  # the non-held-out images in 9 patient groups: one validates, 8 train (~10% / 90%)

# cxrdet's detector recipe for small real data on a CPU budget (profiles/folder-cpu.yaml carries
# the same knobs); the ablation rows of bench/RESULTS.md are the evidence for each choice.
RECIPE: dict[str, Any] = {
    "backbone": "resnet18",
    "image_size": 256,
    # The ablations (bench/RESULTS.md) on the starting recipe (P2, the 2nd place's augmentation,
    # hflip TTA) favoured each of: no P2, no augmentation, no hflip TTA, smaller anchors.
    "p2": False,
    "anchors": {"base_size": 2.0},  # 2 x stride: 16 px at P3 (the reference: 32 px)
    "augment": {"enabled": False},
    "fpn_channels": 64,
    "head_convs": 2,
    "head_norm": True,
    "cls_dropout": 0.0,
    "monitor": "map",
    "global_head": "none",
    "optim": {
        "batch_size": 8,
        "optimizer": "adamw",
        "lr": 0.001,
        "weight_decay": 0.0001,
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "clip_grad_norm": 10.0,
        "seed": 0,
    },
    "decode": {"score_floor": 0.01, "nms_iou": 0.5, "top_k": 50, "candidates": 1000},
    "tta": {"hflip": False, "scales": [1.0], "batch_size": 16},
    "two_stage": {
        "positives_only": False,
        "proposals": 300,
        "representation": 256,
        "decode": {"score_floor": 0.01, "nms_iou": 0.5, "top_k": 50},
    },
}
RECIPE["two_stage"]["optim"] = RECIPE["optim"]  # one optimiser setting for every system
FAMILY_ROWS = {"retinanet": ("RetinaNet", ">= 1.1x"), "two_stage": ("two-stage", ">= 1.0x")}
# How the recipe's TTA views are fused (the ensemble's view fusion; no classifier gating here).
VIEW_FUSION = Fusion("wbf", {"iou_thr": 0.5, "skip_box_thr": 0.0, "conf_type": "avg"})

# Ablations: one change to RECIPE per row (`--ablations [--families ...]`), scored against the
# recipe itself, per family.
RETINANET_ABLATIONS: dict[str, dict[str, Any]] = {
    "P2 (P2-P7)": {"p2": True},
    "no GroupNorm heads": {"head_norm": False},
    "2nd-place augmentation on": {"augment": {"enabled": True}},
    "cls dropout 0.5": {"cls_dropout": 0.5},
    "reference width and depth (256 wide, 4 convs)": {"fpn_channels": 256, "head_convs": 4},
    "global head (normal/abnormal)": {"global_head": "opacity"},
    "lr 3e-4": {"optim": {"lr": 0.0003}},
    "hflip TTA": {"tta": {"hflip": True}},
    "TTA scales 0.8/1/1.2": {"tta": {"scales": [0.8, 1.0, 1.2]}},
    "reference anchors (32 px at P3)": {"anchors": {"base_size": 4.0}},
}
TWO_STAGE_ABLATIONS: dict[str, dict[str, Any]] = {
    "P2 (P2-P6)": {"p2": True},
    "RPN anchors 32 px at P3 (recipe: 64)": {"two_stage": {"anchors": {"base_size": 4.0}}},
    "no deformable C5": {"two_stage": {"deformable": []}},
    "box head 1024 wide (reference)": {"two_stage": {"representation": 1024}},
    "1000 proposals (reference)": {"two_stage": {"proposals": 1000}},
    "positives only (1st place)": {"two_stage": {"positives_only": True}},
}
ABLATIONS = {"retinanet": RETINANET_ABLATIONS, "two_stage": TWO_STAGE_ABLATIONS}


@dataclass
class Scored:
    name: str
    epochs: float
    train_s: float
    map: float
    per_class: dict[str, float]
    rsna: float  # threshold chosen on validation
    rsna_threshold: float
    rsna_best: float  # the best threshold on the held-out part (optimistic)


@dataclass(frozen=True)
class Parts:
    prepared: Prepared
    train: list[str]
    val: list[str]
    holdout: list[str]


def prepare_parts(data: Path, size: int, workdir: Path, seed: int, limit: int | None) -> Parts:
    """The `folder` source's canonical tables and cache, then a patient-grouped split."""
    prepare_dataset(
        "folder",
        data,
        workdir,
        PrepareOptions(image_size=size, workers=1, sample_grid=0, progress=False),
    )
    prepared = read_prepared(workdir)
    images = prepared.images
    if limit:  # the quick mode's subset: whole patients, seeded
        patients = images["patient_id"].drop_duplicates().sample(frac=1.0, random_state=seed)
        keep = patients[
            images.groupby("patient_id").size().loc[patients].cumsum().to_numpy() <= limit
        ]
        images = images[images["patient_id"].isin(keep)]
    split = make_folds(
        images,
        prepared.boxes[prepared.boxes["image_id"].isin(images["image_id"])],
        folds=VAL_FOLDS,
        holdout_fraction=HOLDOUT_FRACTION,
        seed=seed,
    )
    ids = {
        part: split.loc[mask, "image_id"].tolist()
        for part, mask in (
            ("train", split["fold"] > 0),
            ("val", split["fold"] == 0),
            ("holdout", split["fold"] == HOLDOUT),
        )
    }
    return Parts(prepared, ids["train"], ids["val"], ids["holdout"])


def recipe_params(overrides: dict[str, Any]) -> DetectorParams:
    return DetectorParams.model_validate(deep_merge(copy.deepcopy(RECIPE), overrides))


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`detector.p2=false` / `optim.lr=3e-4` -> a nested override of the recipe (YAML values)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        parts = key.removeprefix("detector.").split(".")
        node = overrides
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return overrides


# ---------------------------------------------------------------- the stock models


class StockTask(DetectionTask):
    """A torchvision detector on cxrdet's loop: the loss is the sum of the model's own losses,
    predictions are its own post-processed detections (label_offset: Faster R-CNN's class 0 is
    the background)."""

    def __init__(self, label_offset: int) -> None:
        super().__init__(None, None, monitor="map", global_head=False)
        self.label_offset = label_offset

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """Nothing to freeze: the stock models train whole from the first epoch."""

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        device = batch["image"].device
        targets = [
            {"boxes": b.to(device), "labels": (c + self.label_offset).to(device)}
            for b, c in zip(batch["boxes"], batch["labels"])
        ]
        return sum(model(list(batch["image"]), targets).values())

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        detections = model(list(batch["image"]))
        return {
            "index": batch["index"].cpu(),
            "boxes": [d["boxes"].cpu().numpy() for d in detections],
            "scores": [d["scores"].cpu().numpy() for d in detections],
            "labels": [(d["labels"] - self.label_offset).cpu().numpy() for d in detections],
            "truth": [b.numpy() for b in batch["boxes"]],
            "truth_labels": [b.numpy() for b in batch["labels"]],
        }


def stock_retinanet(backbone: str, size: int, classes: int) -> StockRetinaNet:
    """torchvision's RetinaNet as its builders make it (FPN and heads 256 wide, anchors 32-512 px),
    on the timm backbone. Inputs arrive normalised: its transform only batches them."""
    sizes = tuple(tuple(s * scale for scale in SCALES) for s in (32, 64, 128, 256, 512))
    return StockRetinaNet(
        TimmFpn(backbone, 256),
        num_classes=classes,
        anchor_generator=AnchorGenerator(sizes, (RATIOS,) * 5),
        min_size=size,
        max_size=size,
        image_mean=[0.0],
        image_std=[1.0],
        detections_per_img=50,
        score_thresh=0.01,
    )


def stock_faster_rcnn(backbone: str, size: int, classes: int) -> StockFasterRCNN:
    """torchvision's Faster R-CNN (FPN 256 wide, anchors 32-512 px x 3 ratios, its RPN/RoI
    defaults, 1024-wide two-fc head) on the timm backbone's P2-P6 pyramid."""
    body = FpnBody(create_detector_backbone(backbone), p2=True, width=256)
    sizes = tuple((8 * stride,) for stride in body.strides)
    return StockFasterRCNN(
        body,
        num_classes=classes + 1,
        rpn_anchor_generator=AnchorGenerator(sizes, (RATIOS,) * len(sizes)),
        box_roi_pool=MultiScaleRoIAlign(body.names, output_size=7, sampling_ratio=2),
        min_size=size,
        max_size=size,
        image_mean=[0.0],
        image_std=[1.0],
        box_detections_per_img=50,
        box_score_thresh=0.01,
    )


# ---------------------------------------------------------------- training at a budget


PROBE_WARMUP = 3  # untimed batches first: allocator, first RPN/matcher passes and AdamW state
PROBE_BATCHES = 6  # timed batches of distinct images, averaged


def cpu_seconds_per_image(
    model: nn.Module, task: DetectionTask, dataset: DetectionDataset, batch: int
) -> float:
    """Training CPU seconds per image of a copy of `model` (loss, backward, AdamW step), averaged
    over PROBE_BATCHES batches of distinct images after PROBE_WARMUP untimed ones: what sets each
    system's share of the budget. A fresh two-stage model's first passes cost up to twice its
    steady state, so a short probe under-trains it. CPU time (all threads), not wall time: on a
    shared machine the wall time swings with the load."""
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(probe.parameters(), 1e-4)
    seconds = 0.0
    for step in range(PROBE_WARMUP + PROBE_BATCHES):
        items = collate_detection(
            [dataset[(step * batch + k) % len(dataset)] for k in range(batch)]
        )
        started = time.process_time()
        task.loss(probe, items).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= PROBE_WARMUP:
            seconds += time.process_time() - started
    return seconds / (PROBE_BATCHES * batch)


@dataclass(frozen=True)
class Schedule:
    """A system's share of the budget: `epochs` passes over `images` training images (a seeded
    subset when the budget buys a fraction of a pass more or less), so every system spends about
    the budget, none overspends by a whole epoch and none leaves most of a pass unused."""

    epochs: int
    images: int


def schedule_for(budget_s: float, per_image_s: float, images: int) -> Schedule:
    passes = max(1, int(budget_s / per_image_s))
    epochs = max(1, round(passes / images))
    return Schedule(epochs, min(images, passes // epochs))


def within_budget(parts: Parts, schedule: Schedule, seed: int) -> Parts:
    """`parts` with the training images `schedule` affords (a seeded subset when it is short)."""
    if schedule.images >= len(parts.train):
        return parts
    kept = np.random.default_rng(seed).permutation(len(parts.train))[: schedule.images]
    return replace(parts, train=[parts.train[k] for k in sorted(kept)])


def epochs_seen(schedule: Schedule, parts: Parts) -> float:
    """Passes over the training images (a fraction when the budget buys less than one)."""
    return schedule.epochs * schedule.images / len(parts.train)


def datasets(
    parts: Parts, params: DetectorParams, augment: Any
) -> tuple[DetectionDataset, DetectionDataset]:
    zeros = np.zeros
    prepared = parts.prepared
    return (
        DetectionDataset(
            CachedImages(prepared, parts.train),
            prepared.images,
            prepared.boxes,
            zeros(len(parts.train), np.int64),
            params.image_size,
            augment,
            params.optim.seed,
        ),
        DetectionDataset(
            CachedImages(prepared, parts.val),
            prepared.images,
            prepared.boxes,
            zeros(len(parts.val), np.int64),
            params.image_size,
        ),
    )


def train_stock(
    kind: str,
    parts: Parts,
    params: DetectorParams,
    runtime: Runtime,
    budget_s: float,
    workdir: Path,
) -> tuple[nn.Module, StockTask, float, float]:
    from cxrdet.data.box_augment import BoxAugmentSettings, detector_augmentation

    classes = len(parts.prepared.info["class_names"])
    torch.manual_seed(params.optim.seed)
    model = (stock_retinanet if kind == "retinanet" else stock_faster_rcnn)(
        params.backbone, params.image_size, classes
    )
    task = StockTask(label_offset=0 if kind == "retinanet" else 1)
    hflip_only = detector_augmentation(
        BoxAugmentSettings(
            shift=0.0,
            scale_sigma=0.0,
            rotate_sigma=0.0,
            shear_sigma=0.0,
            hflip=0.5,
            blur=0.0,
            noise=0.0,
            gamma=0.0,
        )
    )
    train_set, val_set = datasets(parts, params, hflip_only)
    schedule = schedule_for(
        budget_s,
        cpu_seconds_per_image(model, task, train_set, params.optim.batch_size),
        len(train_set),
    )
    train_set, _ = datasets(within_budget(parts, schedule, params.optim.seed), params, hflip_only)
    optim = params.optim.model_copy(update={"epochs": schedule.epochs})
    started = time.process_time()
    fit(
        model,
        task,
        train_set,
        val_set,
        optim=optim,
        runtime=runtime.params,
        device=runtime.device,
        checkpoint_dir=workdir / f"stock_{kind}",
        identity={"bench": f"stock_{kind}"},
        collate_fn=collate_detection,
        desc=f"stock {kind}",
    )
    return model, task, epochs_seen(schedule, parts), time.process_time() - started


def stock_predictions(
    model: nn.Module, task: StockTask, parts: Parts, image_ids: list[str], size: int
) -> pd.DataFrame:
    from cxrdet.data.detection import boxes_to_original
    from cxrdet.runtime.distributed import DistContext
    from cxrdet.runtime.inference import predict_dataset

    prepared = parts.prepared
    dataset = DetectionDataset(
        CachedImages(prepared, image_ids),
        prepared.images,
        prepared.boxes,
        np.zeros(len(image_ids), np.int64),
        size,
    )
    outputs = predict_dataset(
        model,
        dataset,
        task.predict,
        batch_size=16,
        device=torch.device("cpu"),
        runtime=TrainParams(progress=False),
        context=DistContext(),
        collate_fn=collate_detection,
        desc="stock predict",
    )
    owners, boxes, scores, labels = [], [], [], []
    for output in outputs:
        for index, b, s, c in zip(
            output["index"].tolist(), output["boxes"], output["scores"], output["labels"]
        ):
            owners += [image_ids[index]] * len(b)
            boxes.append(b)
            scores.append(s)
            labels.append(c)
    xyxy = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    frame = boxes_to_original(owners, xyxy, prepared.images, size)
    return frame.assign(
        score=np.concatenate(scores) if scores else [],
        class_id=np.concatenate(labels).astype(np.int64) if labels else [],
    )


def train_ours(
    family: str,
    parts: Parts,
    params: DetectorParams,
    runtime: Runtime,
    budget_s: float,
    workdir: Path,
) -> tuple[nn.Module, float, float, DetectorParams]:
    from cxrdet.data.box_augment import BoxAugmentSettings, detector_augmentation
    from cxrdet.families import family_settings
    from cxrdet.models.retinanet import RetinaNetLoss, loss_config

    prepared = parts.prepared
    data = detector_data(prepared, params)
    model = seeded_family(params, data, family)
    # Calibrate the epochs on the training task's loss, as train_detector will run it.
    augment = detector_augmentation(
        BoxAugmentSettings(**params.augment.model_dump(exclude={"enabled"}))
    )
    train_set, _ = datasets(parts, params, augment if params.augment.enabled else None)
    settings = family_settings(params, family)
    if family == "retinanet":
        probe_task = DetectionTask(
            RetinaNetLoss(model.box_coder, loss_config(params)), settings.decode, global_head=False
        )
    else:
        from cxrdet.families.two_stage import TwoStageTask

        probe_task = TwoStageTask(settings.decode)
    schedule = schedule_for(
        budget_s,
        cpu_seconds_per_image(model, probe_task, train_set, settings.optim.batch_size),
        len(train_set),
    )
    update = (
        {"optim": {"epochs": schedule.epochs}}
        if family == "retinanet"
        else {"two_stage": {"optim": {"epochs": schedule.epochs}}}
    )
    params = DetectorParams.model_validate(deep_merge(params.model_dump(), update))
    started = time.process_time()
    train_detector(
        model,
        params,
        data,
        prepared,
        within_budget(parts, schedule, params.optim.seed).train,
        parts.val,
        runtime,
        workdir / f"ours_{family}",
        identity={"bench": f"ours_{family}"},
        desc=f"ours {family}",
    )
    return model, epochs_seen(schedule, parts), time.process_time() - started, params


def our_predictions(
    model: nn.Module, params: DetectorParams, parts: Parts, image_ids: list[str], runtime: Runtime
) -> pd.DataFrame:
    """Every TTA view's boxes of `image_ids`, fused per image by the ensemble's view fusion."""
    prepared = parts.prepared
    data = detector_data(prepared, params)
    boxes, images = predict_detector(model, params, data, prepared, image_ids, runtime, fold=0)
    sizes = prepared.images[prepared.images["image_id"].isin(image_ids)][
        ["image_id", "width", "height"]
    ]
    classifier = pd.DataFrame(columns=["image_id", "fold", "model", "view", "opacity"])
    recipe = EnsembleRecipe(
        view_fusion=VIEW_FUSION,
        fold_fusion=VIEW_FUSION,
        gating=Gating("none", {}),
        shrink=1.0,
        score_threshold=0.0,
        max_boxes=params.decode.top_k,
    )
    return apply_recipe(MemberPredictions(boxes, images, classifier, sizes), recipe).boxes


# ---------------------------------------------------------------- scores


def score(
    name: str, parts: Parts, val: pd.DataFrame, holdout: pd.DataFrame, epochs: float, train_s: float
) -> Scored:
    boxes = parts.prepared.boxes
    truth = {
        part: boxes[boxes["image_id"].isin(getattr(parts, part))].reset_index(drop=True)
        for part in ("val", "holdout")
    }
    threshold, _ = best_threshold(rsna_by_threshold(truth["val"], val))
    _, optimistic = best_threshold(rsna_by_threshold(truth["holdout"], holdout))
    result = mean_average_precision(truth["holdout"], holdout)
    names = parts.prepared.info["class_names"]
    kept = holdout[holdout["score"] >= threshold] if math.isfinite(threshold) else holdout
    return Scored(
        name,
        epochs,
        train_s,
        result.score,
        {names[k]: v for k, v in sorted(result.per_class.items())},
        rsna_score(truth["holdout"], kept).score,
        threshold,
        optimistic,
    )


@dataclass(frozen=True)
class System:
    """One trained-and-scored detector: ours (a family on `params`) or a stock torchvision model."""

    name: str
    family: str  # retinanet | two_stage
    stock: bool
    params: DetectorParams


def run_system(system: System, parts: Parts, budget_s: float, workdir: Path) -> Scored:
    """Train `system` on one CPU thread for the budget, score it on validation and held-out
    images."""
    runtime = start_runtime(TrainParams(threads=1, progress=False))
    workdir = workdir / system.name.replace(" ", "_")
    if system.stock:
        kind = "retinanet" if system.family == "retinanet" else "faster_rcnn"
        model, task, epochs, seconds = train_stock(
            kind, parts, system.params, runtime, budget_s, workdir
        )
        val, holdout = (
            stock_predictions(model, task, parts, ids, system.params.image_size)
            for ids in (parts.val, parts.holdout)
        )
    else:
        model, epochs, seconds, trained = train_ours(
            system.family, parts, system.params, runtime, budget_s, workdir
        )
        val, holdout = (
            our_predictions(model, trained, parts, ids, runtime)
            for ids in (parts.val, parts.holdout)
        )
    return score(system.name, parts, val, holdout, epochs, seconds)


def run_systems(
    systems: Sequence[System], parts: Parts, budget_s: float, workdir: Path, jobs: int
) -> list[Scored]:
    """Every system in its own spawned single-threaded process, `jobs` at a time: the two sides of
    a comparison train side by side, under the same machine load."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run_system, system, parts, budget_s, workdir) for system in systems]
        return [future.result() for future in tqdm(futures, desc="systems", unit="system")]


def pair_rows(label: str, ours: Scored, stock: Scored, target: str) -> list[Row]:
    rows = [
        Row(
            f"{label} mAP@0.4",
            ours.map,
            stock.map,
            "mAP",
            target=target,
            note=(
                f"ours {ours.epochs:.3g} epochs in {ours.train_s:.0f} CPU-s, "
                f"stock {stock.epochs:.3g} in {stock.train_s:.0f} CPU-s"
            ),
        )
    ]
    rows += [
        Row(f"{label}   AP {name}", ours.per_class.get(name), stock.per_class.get(name), "AP")
        for name in sorted(set(ours.per_class) | set(stock.per_class))
    ]
    rows.append(Row(f"{label} RSNA score (val threshold)", ours.rsna, stock.rsna, "score"))
    rows.append(
        Row(
            f"{label} RSNA score (best threshold, optimistic)",
            ours.rsna_best,
            stock.rsna_best,
            "score",
        )
    )
    rows.append(Row.speedup(f"{label} training CPU time", ours.train_s, stock.train_s, "CPU-s"))
    return rows


def main() -> None:
    parser = arguments(
        __doc__, quick_help="a few minutes: a subset of the images, 128 px, a short budget"
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the nih-bbox folder (folder layout)"
    )
    parser.add_argument(
        "--budget", type=float, help="training CPU-seconds per system (default: 900, quick: 40)"
    )
    parser.add_argument(
        "--size", type=int, help="image side (default: the recipe's 256; quick: 128)"
    )
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe knob"
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILY_ROWS),
        help="detector pairs to run (default: both; quick: retinanet)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="systems trained at once (default 2: both sides of a pair)",
    )
    parser.add_argument(
        "--ablations", action="store_true", help="ours with one recipe change per row (no stock)"
    )
    args = parser.parse_args()
    if not (args.data / "annotations.csv").is_file():
        parser.error(
            f"{args.data}: no annotations.csv (the nih-bbox folder; --data or CXRDET_NIH_BBOX)"
        )
    budget = args.budget or (40.0 if args.quick else 900.0)
    size = args.size or (128 if args.quick else RECIPE["image_size"])
    overrides = deep_merge({"image_size": size, "optim": {"seed": args.seed}}, parse_sets(args.set))
    try:
        params = recipe_params(overrides)
    except ValueError as error:  # pydantic's ValidationError names the key and what is allowed
        parser.error(f"--set: {error}")
    with tempfile.TemporaryDirectory(prefix="cxrdet-quality-") as tmp:
        workdir = Path(tmp)
        parts = prepare_parts(
            args.data, size, workdir / "prepared", args.seed, 120 if args.quick else None
        )
        context = (
            f"{args.data.name}: {len(parts.train)} train / {len(parts.val)} validation / "
            f"{len(parts.holdout)} held-out images (patient-grouped, seed {args.seed}), "
            f"{params.backbone} at {size} px from scratch, {budget:.0f} CPU-s of training per "
            f"system, one CPU thread each, {args.jobs} at a time; mAP@0.4 = VOC AP at "
            "IoU 0.4 averaged over the box classes"
        )
        rows: list[Row] = []
        notes = [
            "recipe: "
            f"{json.dumps(params.model_dump(include=set(RECIPE) | set(overrides)), default=str)}"
        ]
        families = args.families or (
            ["retinanet"] if args.quick or args.ablations else list(FAMILY_ROWS)
        )
        if args.ablations:
            for family in families:
                label = FAMILY_ROWS[family][0]
                systems = [System(f"{label} recipe", family, False, params)] + [
                    System(
                        f"{label} {name}",
                        family,
                        False,
                        recipe_params(deep_merge(copy.deepcopy(overrides), change)),
                    )
                    for name, change in ABLATIONS[family].items()
                ]
                base, *ablated = run_systems(systems, parts, budget, workdir, args.jobs)
                rows += [
                    Row(
                        f"{base.name} vs {one.name.removeprefix(label).strip()}: mAP@0.4",
                        base.map,
                        one.map,
                        "mAP",
                        note=(
                            f"RSNA {base.rsna:.3f} vs {one.rsna:.3f}; "
                            f"epochs {base.epochs:.3g} vs {one.epochs:.3g}"
                        ),
                    )
                    for one in ablated
                ]
        else:
            systems = [
                System(f"{side} {family}", family, side == "stock", params)
                for family in families
                for side in ("ours", "stock")
            ]
            scored = run_systems(systems, parts, budget, workdir, args.jobs)
            for family, (ours, stock) in zip(families, zip(scored[::2], scored[1::2])):
                label, target = FAMILY_ROWS[family]
                rows += pair_rows(label, ours, stock, target)
    emit(Report("quality", context, rows, notes), args.json)


if __name__ == "__main__":
    main()
