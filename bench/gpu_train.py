"""Detector training speed on one GPU with a real-data profile (issue 21, "## GPU"), and the
projected time of one real RSNA fold.

    python bench/gpu_train.py [--quick] [--json OUT] [--details OUT] [--device auto|cpu|cuda]
                              [--profile profiles/rsna-gpu.yaml] [--budget SECONDS]
                              [--parts knobs fold loader two_stage breakdown]

Everything runs on synthetic RSNA-size data made here: 1024 px originals cached as PNG at the
profile's detector.image_size (512), 22.5% of the images with 1-3 opacity boxes (RSNA's share),
RSNA's three image labels for the global head. The detector is the profile's `detector`
section (backbone, P2, FPN and head widths, GroupNorm heads, class dropout, frozen BN, global
head, anchors, loss, augmentation, optimiser) with `weights: none`: random weights train at the
speed of ImageNet ones, and the GPU machine is offline. The runtime is the profile's `train`
section merged over params.yaml (so `deterministic: true`, which the profile inherits).

1. knobs: the loop's own training step (autocast bf16, gradient clipping, Adam; a GradScaler
   only for fp16) on batches already on the GPU, encoder unfrozen (epochs 2-12 of a fold),
   one knob changed at a time from the profile: train.deterministic (off lets cuDNN pick its
   fastest kernels: cudnn.benchmark), AMP, channels_last, batch size, the se_resnext50-class
   backbone of the issue's goal, P2 off. Images/s after warm-up and peak GPU memory
   (torch.cuda.max_memory_allocated) of each.
2. fold: `cxrdet.train.detector.train_detector` itself (the loop `fit`: DataLoader with the
   profile's workers and augmentation, pinned memory, checkpoints) for 3 short epochs, the first
   with the encoder frozen as the profile's freeze_encoder_epochs says, no validation; then the
   validation pass `fit` runs each epoch (predict_dataset + the RSNA score) and the TTA
   predictions of the fold stage (predict_detector, 6 views). Once as the profile is, once with
   deterministic off at the batch of the fastest knob-1 row of the profile's backbone.
3. loader: the training DataLoader alone (PNG reads, augmentation, collation), 8 and 16 workers.
4. two-stage: the profile's second family (deformable C5, relation head, batch 8), training and
   inference steps on GPU batches.
5. breakdown: where a step's time goes, for the goal's backbone at batch 32: the loop's step,
   the same without GroupNorm in the heads (detector.head_norm, from params.yaml), the model
   with a trivial loss (what RetinaNetLoss costs), the encoder alone (the ceiling of any
   detector on it).

The projection of one RSNA fold (26,684 images, split.holdout_fraction out, the rest in
split.folds folds: a fold trains on (folds-1)/folds of it and validates on the rest, for
detector.optim.epochs epochs; the first with the encoder frozen) is
epochs x (train / train img/s + validation / validation img/s) + (validation + holdout) / TTA
img/s for the RetinaNet, plus the two-stage family (positive images only) where measured. It is
an upper bound: early stopping (patience) can end a fold sooner.

Without CUDA and without --quick it measures nothing (a CPU says nothing about a GPU profile)
and says so. `--quick` is the CPU smoke run the tests use: a tiny backbone at 128 px.
bench/gpu_check.sh runs this on a GPU machine together with bench/detector.py --device cuda.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrdet.config import DetectorParams, load_params
from cxrdet.data.box_augment import BoxAugmentSettings, detector_augmentation
from cxrdet.data.datasets import CachedImages, Prepared
from cxrdet.data.detection import DetectionDataset, collate_detection
from cxrdet.families.task import DetectionTask
from cxrdet.models.retinanet import DecodeConfig, RetinaNetLoss, decode_config, loss_config
from cxrdet.models.two_stage import build_two_stage
from cxrdet.runtime.device import amp_dtype, autocast
from cxrdet.runtime.distributed import DistContext
from cxrdet.runtime.inference import predict_dataset
from cxrdet.runtime.seed import configure_determinism, seed_everything
from cxrdet.runtime.session import Runtime
from cxrdet.train.detector import detector_data, predict_detector, seeded_family, train_detector

from common import Report, Row, arguments, emit, machine

ROOT = Path(__file__).resolve().parents[1]
RSNA_IMAGES = 26_684  # stage_2_train_labels.csv's images
RSNA_POSITIVE = 0.2253  # their share with Lung Opacity boxes (6,012)
RSNA_LABELS = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
ORIGINAL_SIDE = 1024  # RSNA's DICOMs
GOAL = 400.0  # issue 21: train img/s at 512 px, se_resnext50-class backbone, one H200-class GPU
GOAL_BACKBONE = "legacy_seresnext50_32x4d"
PARTS = ("knobs", "fold", "loader", "two_stage", "breakdown")


# ---------------------------------------------------------------- synthetic RSNA-size data


def synthetic_prepared(root: Path, count: int, size: int, seed: int = 0) -> Prepared:
    """A prepared folder of `count` synthetic chest-like images (smooth anatomy + noise, PNG
    at `size`, originals ORIGINAL_SIDE px), RSNA's positive share and labels, 1-3 boxes each."""
    rng = np.random.default_rng(seed)
    (root / "cache").mkdir(parents=True, exist_ok=True)
    ids = [f"synthetic{k:05d}" for k in range(count)]
    positive = rng.random(count) < RSNA_POSITIVE
    labels = np.where(
        positive, RSNA_LABELS[2], np.where(rng.random(count) < 0.5, RSNA_LABELS[0], RSNA_LABELS[1])
    )
    rows = []
    for image_id, found in zip(ids, positive):
        for _ in range(int(rng.integers(1, 4)) if found else 0):
            w, h = rng.uniform(120, 320, 2)  # RSNA boxes: ~100-400 px of 1024
            x, y = (
                rng.uniform(100, ORIGINAL_SIDE - 100 - w),
                rng.uniform(150, ORIGINAL_SIDE - 100 - h),
            )
            rows.append({"image_id": image_id, "x": x, "y": y, "w": w, "h": h, "class_id": 0})
    boxes = pd.DataFrame(rows, columns=["image_id", "x", "y", "w", "h", "class_id"])
    seeds = rng.integers(0, 2**31, count)

    def write(k: int) -> None:
        local = np.random.default_rng(int(seeds[k]))
        coarse = local.uniform(40, 200, (16, 16)).astype(np.float32)
        image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        image += local.normal(0, 6, (size, size)).astype(np.float32)
        cv2.imwrite(str(root / "cache" / f"{ids[k]}.png"), np.clip(image, 0, 255).astype(np.uint8))

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(write, range(count)))
    images = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": ids,
            "width": ORIGINAL_SIDE,
            "height": ORIGINAL_SIDE,
            "label": labels,
            "cache_path": [f"cache/{i}.png" for i in ids],
            "scale_x": size / ORIGINAL_SIDE,
            "scale_y": size / ORIGINAL_SIDE,
        }
    )
    info = {
        "class_names": ["Lung Opacity"],
        "image_labels": RSNA_LABELS,
        "data_hash": f"synthetic-{count}-{size}-{seed}",
    }
    return Prepared(root, images, boxes, pd.DataFrame({"image_id": ids}), info)


def gpu_batches(
    prepared: Prepared,
    params: DetectorParams,
    ids: list[str],
    batch: int,
    count: int,
    device: torch.device,
    channels_last: bool,
) -> list[dict[str, Any]]:
    """`count` training batches (augmented, normalised) already on the device."""
    data, size = detector_data(prepared, params), params.image_size
    dataset = DetectionDataset(
        CachedImages(prepared, ids),
        prepared.images,
        prepared.boxes,
        data.image_labels.loc[ids].to_numpy(),
        size,
        detector_augmentation(BoxAugmentSettings()),
    )
    batches = []
    for k in range(count):
        items = [dataset[(k * batch + i) % len(dataset)] for i in range(batch)]
        collated = collate_detection(items)
        image = collated["image"].to(device)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        batches.append(
            {
                "image": image,
                "boxes": [b.to(device) for b in collated["boxes"]],
                "labels": [b.to(device) for b in collated["labels"]],
                "image_label": collated["image_label"].to(device),
            }
        )
    return batches


# ---------------------------------------------------------------- 1. knobs


@dataclass(frozen=True)
class Knobs:
    label: str
    backbone: str
    batch: int
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = True  # train.deterministic: True also turns cudnn.benchmark off
    p2: bool = True
    head_norm: bool = True  # detector.head_norm: GroupNorm in the heads' conv towers
    # what a step trains: "step" the loop's (model + RetinaNetLoss), "model" the model with a
    # trivial loss (the mean of its outputs: what the loss costs), "backbone" the encoder alone
    mode: str = "step"


@dataclass
class Measure:
    label: str
    settings: dict[str, Any]
    img_s: float | None = None
    gpu_mem_gib: float | None = None
    gpu_reserved_gib: float | None = None
    steps: int = 0
    seconds: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float | None, float | None]:
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(
        device
    ) / 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(
    step: Callable[[int], None],
    warmup: int,
    min_steps: int,
    max_steps: int,
    min_seconds: float,
    device: torch.device,
) -> tuple[int, float]:
    """(steps, seconds) of `step(k)` after `warmup` untimed calls: at least min_steps and
    min_seconds, at most max_steps."""
    for k in range(warmup):
        step(k)
    sync(device)
    start, steps = time.perf_counter(), 0
    while steps < max_steps and (steps < min_steps or time.perf_counter() - start < min_seconds):
        step(warmup + steps)
        steps += 1
    sync(device)
    return steps, time.perf_counter() - start


def knob_rate(
    knobs: Knobs,
    params: DetectorParams,
    prepared: Prepared,
    ids: list[str],
    device: torch.device,
    shape: dict[str, Any],
) -> Measure:
    """Training images/s of the profile's RetinaNet under `knobs`: fit's step on GPU batches."""
    result = Measure(knobs.label, asdict(knobs))
    model = optimizer = batches = None
    try:
        configure_determinism(knobs.deterministic)
        detector = params.model_copy(
            update={"backbone": knobs.backbone, "p2": knobs.p2, "head_norm": knobs.head_norm}
        )
        data = detector_data(prepared, detector)
        model = seeded_family(detector, data, "retinanet").to(device)
        if knobs.channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        model.freeze_encoder(False)
        criterion = RetinaNetLoss(model.box_coder, loss_config(detector))
        optim = detector.optim
        optimizer = torch.optim.Adam(model.parameters(), optim.lr, weight_decay=optim.weight_decay)
        dtype = amp_dtype(device, knobs.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        batches = gpu_batches(
            prepared,
            detector,
            ids,
            knobs.batch,
            shape["distinct_batches"],
            device,
            knobs.channels_last,
        )
        reset_memory(device)

        def loss_of(batch: dict[str, Any]) -> torch.Tensor:
            if knobs.mode == "backbone":
                return sum(f.float().mean() for f in model.backbone(batch["image"]))
            outputs = model(batch["image"])
            if knobs.mode == "model":
                return sum(v.float().mean() for k, v in outputs.items() if k != "anchors")
            return criterion(outputs, batch["boxes"], batch["labels"], batch["image_label"])[0]

        def step(k: int) -> None:  # cxrdet.train.loop._train_epoch's step
            batch = batches[k % len(batches)]
            with autocast(device, dtype):
                loss = loss_of(batch)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss {loss.item()}")
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss.item()

        steps, seconds = timed_steps(
            step,
            shape["warmup"],
            shape["min_steps"],
            shape["max_steps"],
            shape["min_seconds"],
            device,
        )
        result.steps, result.seconds, result.img_s = steps, seconds, steps * knobs.batch / seconds
        result.gpu_mem_gib, result.gpu_reserved_gib = peak_memory(device)
    except torch.cuda.OutOfMemoryError as error:
        result.error = f"out of memory: {str(error).splitlines()[0]}"
    except Exception as error:  # noqa: BLE001 - one configuration failing must not lose the others
        result.error = f"{type(error).__name__}: {error}"
    model = optimizer = batches = None  # free the GPU memory before the next measure
    reset_memory(device)
    return result


# ---------------------------------------------------------------- 2. the fold path


def fold_run(
    label: str,
    params: DetectorParams,
    train_runtime: Any,
    prepared: Prepared,
    train_ids: list[str],
    val_ids: list[str],
    device: torch.device,
    epochs: int,
    work: Path,
) -> Measure:
    """train_detector for `epochs` short epochs (the first with the encoder frozen), then the
    validation pass and the fold stage's TTA predictions, each timed."""
    result = Measure(
        label,
        {
            "backbone": params.backbone,
            "batch": params.optim.batch_size,
            "workers": train_runtime.workers,
            "amp": train_runtime.amp,
            "channels_last": train_runtime.channels_last,
            "deterministic": train_runtime.deterministic,
            "train_images": len(train_ids),
            "epochs": epochs,
            "freeze_encoder_epochs": params.freeze_encoder_epochs,
        },
    )
    model = None
    try:
        configure_determinism(train_runtime.deterministic)
        runtime = Runtime(train_runtime, device, DistContext())
        data = detector_data(prepared, params)
        model = seeded_family(params, data, "retinanet")
        reset_memory(device)
        started = time.perf_counter()
        fitted = train_detector(
            model,
            params,
            data,
            prepared,
            train_ids,
            None,
            runtime,
            work / label,
            identity={"bench": label},
            desc=label,
            epochs=epochs,
        )
        sync(device)
        result.seconds = time.perf_counter() - started
        batch = params.optim.batch_size
        trained = len(train_ids) // batch * batch  # fit drops the last partial batch
        rates = [trained / epoch["epoch_time"] for epoch in fitted.history]
        result.extra |= {
            "epoch_img_s": rates,
            "epoch_seconds": [e["epoch_time"] for e in fitted.history],
            "data_wait_seconds": [e["data_time"] for e in fitted.history],
        }
        frozen = params.freeze_encoder_epochs
        steady = rates[frozen:] or rates
        result.img_s = float(
            np.mean(steady[1:] if len(steady) > 1 else steady)
        )  # first unfrozen epoch warms up
        result.extra["frozen_img_s"] = rates[0] if frozen and len(rates) > 1 else None
        result.gpu_mem_gib, result.gpu_reserved_gib = peak_memory(device)

        labels = data.image_labels.loc[val_ids].to_numpy()
        val_set = DetectionDataset(
            CachedImages(prepared, val_ids),
            prepared.images,
            prepared.boxes,
            labels,
            params.image_size,
        )
        task = DetectionTask(None, decode_config(params), monitor=params.monitor)
        sync(device)
        start = time.perf_counter()
        outputs = predict_dataset(
            model,
            val_set,
            task.predict,
            batch_size=batch,
            device=device,
            runtime=train_runtime,
            context=DistContext(),
            collate_fn=collate_detection,
            desc="validate",
        )
        task.score(outputs)
        result.extra["val_img_s"] = len(val_ids) / (time.perf_counter() - start)
        start = time.perf_counter()
        predict_detector(model, params, data, prepared, val_ids, runtime, fold=0)
        result.extra["tta_img_s"] = len(val_ids) / (time.perf_counter() - start)
        result.extra["tta_views"] = (2 if params.tta.hflip else 1) * len(params.tta.scales)
    except torch.cuda.OutOfMemoryError as error:
        result.error = f"out of memory: {str(error).splitlines()[0]}"
    except Exception as error:  # noqa: BLE001
        result.error = f"{type(error).__name__}: {error}"
    model = None
    reset_memory(device)
    return result


# ---------------------------------------------------------------- 3. loader, 4. two-stage


def loader_rate(
    prepared: Prepared, ids: list[str], params: DetectorParams, workers: int, device: torch.device
) -> float:
    """Images/s of the training DataLoader alone (as fit builds it), first batch excluded."""
    data = detector_data(prepared, params)
    augment = detector_augmentation(
        BoxAugmentSettings(**params.augment.model_dump(exclude={"enabled"}))
    )
    dataset = DetectionDataset(
        CachedImages(prepared, ids),
        prepared.images,
        prepared.boxes,
        data.image_labels.loc[ids].to_numpy(),
        params.image_size,
        augment,
    )
    loader = DataLoader(
        dataset,
        batch_size=params.optim.batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_detection,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    next(batches)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def two_stage_rates(
    params: DetectorParams,
    prepared: Prepared,
    ids: list[str],
    device: torch.device,
    knobs: Knobs,
    shape: dict[str, Any],
) -> Measure:
    """Training and inference images/s of the profile's two-stage family (positive images only)."""
    two_stage = params.two_stage
    batch = two_stage.optim.batch_size
    result = Measure(
        "two-stage, " + knobs.label, {**asdict(knobs), "batch": batch, "backbone": params.backbone}
    )
    model = optimizer = batches = None
    try:
        configure_determinism(knobs.deterministic)
        seed_everything(two_stage.optim.seed)
        model = build_two_stage(params, 1).to(device)
        if knobs.channels_last:
            model.to(memory_format=torch.channels_last)
        positive = [i for i in ids if i in set(prepared.boxes["image_id"])]
        batches = gpu_batches(
            prepared,
            params,
            positive,
            batch,
            shape["distinct_batches"],
            device,
            knobs.channels_last,
        )
        optimizer = torch.optim.Adam(model.parameters(), two_stage.optim.lr)
        dtype = amp_dtype(device, knobs.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        reset_memory(device)

        def train_step(k: int) -> None:  # TwoStageTask.loss in fit's step
            model.train()
            b = batches[k % len(batches)]
            targets = [{"boxes": x, "labels": c} for x, c in zip(b["boxes"], b["labels"])]
            with autocast(device, dtype):
                loss = sum(model(b["image"], targets).values())
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), two_stage.optim.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss.item()

        steps, seconds = timed_steps(
            train_step,
            shape["warmup"],
            shape["min_steps"],
            shape["max_steps"],
            shape["min_seconds"],
            device,
        )
        result.steps, result.seconds, result.img_s = steps, seconds, steps * batch / seconds
        result.gpu_mem_gib, result.gpu_reserved_gib = peak_memory(device)
        decode = DecodeConfig(**two_stage.decode.model_dump())

        @torch.inference_mode()
        def infer_step(k: int) -> None:
            model.eval()
            images = batches[k % len(batches)]["image"]
            with autocast(device, dtype):
                model.detect(images, tuple(images.shape[-2:]), decode)

        steps, seconds = timed_steps(
            infer_step, 1, shape["min_steps"], shape["max_steps"], shape["min_seconds"] / 2, device
        )
        result.extra["infer_img_s"] = steps * batch / seconds
    except torch.cuda.OutOfMemoryError as error:
        result.error = f"out of memory: {str(error).splitlines()[0]}"
    except Exception as error:  # noqa: BLE001
        result.error = f"{type(error).__name__}: {error}"
    model = optimizer = batches = None  # free the GPU memory before the next measure
    reset_memory(device)
    return result


# ---------------------------------------------------------------- projection


def fold_sizes(folds: int, holdout_fraction: float, images: int = RSNA_IMAGES) -> dict[str, int]:
    """Images of one RSNA fold: training, validation (its out-of-fold part), the holdout."""
    holdout = round(images * holdout_fraction)
    rest = images - holdout
    return {
        "train": round(rest * (folds - 1) / folds),
        "validation": round(rest / folds),
        "holdout": holdout,
    }


def project_fold(
    sizes: dict[str, int],
    epochs: int,
    frozen_epochs: int,
    train_img_s: float,
    frozen_img_s: float | None,
    val_img_s: float,
    tta_img_s: float,
    two_stage: Measure | None = None,
    two_stage_epochs: int = 0,
    tta_views: int = 6,
) -> dict[str, float]:
    """Seconds of one fold: the RetinaNet's epochs (training + validation) and TTA predictions,
    plus the two-stage family's (positives only; validation single view; TTA ~ tta_views x 1.03
    single-view costs: scales 0.8/1.0/1.2 cost 0.64/1/1.44 of the pixels)."""
    train, val, holdout = sizes["train"], sizes["validation"], sizes["holdout"]
    frozen = min(frozen_epochs, epochs)
    retinanet = (
        frozen * train / (frozen_img_s or train_img_s)
        + (epochs - frozen) * train / train_img_s
        + epochs * val / val_img_s
        + (val + holdout) / tta_img_s
    )
    out = {"retinanet_s": retinanet}
    if two_stage is not None and two_stage.img_s and two_stage.extra.get("infer_img_s"):
        infer = two_stage.extra["infer_img_s"]
        positives = round(train * RSNA_POSITIVE)
        out["two_stage_s"] = (
            two_stage_epochs * (positives / two_stage.img_s + val / infer)
            + (val + holdout) * tta_views * (3.08 / 3) / infer
        )
    out["total_s"] = sum(out.values())
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    parser = arguments(__doc__, quick_help="CPU smoke run: tiny backbone, 128 px, a few steps")
    parser.add_argument("--profile", type=Path, default=ROOT / "profiles" / "rsna-gpu.yaml")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--budget",
        type=float,
        default=360.0,
        help="seconds: measures not started by then are skipped (and listed)",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure, in this order (default: all)",
    )
    parser.add_argument(
        "--details",
        type=Path,
        metavar="OUT",
        help="also write every measure (memory, epochs) as JSON",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    quick = args.quick
    config = load_params(ROOT / "params.yaml", profile=args.profile)
    base = config.detector.model_copy(update={"weights": "none"})
    runtime = config.train.model_copy(update={"device": device.type, "progress": False})
    sizes = fold_sizes(config.split.folds, config.split.holdout_fraction)
    info = {
        **machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        if cuda
        else None,
    }
    details: dict[str, Any] = {
        "profile": str(
            args.profile.relative_to(ROOT) if args.profile.is_relative_to(ROOT) else args.profile
        ),
        "quick": quick,
        "machine": info,
        "fold_images": sizes,
        "goal_img_s": GOAL,
        "knobs": [],
        "fold": [],
        "loader": {},
        "skipped": [],
    }
    notes = []
    if not cuda and not quick:
        notes.append(
            "no CUDA device: nothing measured (run on a GPU machine: bench/gpu_check.sh); "
            "--quick is the CPU smoke run"
        )
        emit(
            Report(
                "gpu_train",
                f"profile {details['profile']}, no CUDA device",
                [Row("train img/s, profile as is", None, None, "img/s", note="needs a GPU")],
                notes,
                info,
            ),
            args.json,
        )
        if args.details:
            args.details.parent.mkdir(parents=True, exist_ok=True)
            args.details.write_text(json.dumps(details, indent=2) + "\n")
        return

    if quick:
        backbone, goal_backbone, size, batch = "regnetx_002", "regnetx_002", 128, 4
        base = base.model_copy(
            update={
                "backbone": backbone,
                "image_size": size,
                "fpn_channels": 32,
                "optim": base.optim.model_copy(update={"batch_size": batch}),
                "two_stage": base.two_stage.model_copy(
                    update={
                        "representation": 64,
                        "proposals": 100,
                        "optim": base.two_stage.optim.model_copy(update={"batch_size": 2}),
                    }
                ),
            }
        )
        runtime = runtime.model_copy(update={"workers": 0})
        shape = {
            "distinct_batches": 1,
            "warmup": 1,
            "min_steps": 1,
            "max_steps": 1,
            "min_seconds": 0.0,
        }
        counts, fold_epochs, workers = {"train": 8, "val": 4}, 2, [0]
        args.budget = math.inf
    else:
        backbone, goal_backbone, size, batch = (
            base.backbone,
            GOAL_BACKBONE,
            base.image_size,
            base.optim.batch_size,
        )
        shape = {
            "distinct_batches": 4,
            "warmup": 5,
            "min_steps": 12,
            "max_steps": 60,
            "min_seconds": 3.0,
        }
        counts, fold_epochs, workers = (
            {"train": 1920, "val": 320},
            3,
            [runtime.workers, os.cpu_count() or 1],
        )
    profile_deterministic = runtime.deterministic
    os.environ.setdefault(
        "CUBLAS_WORKSPACE_CONFIG", ":4096:8"
    )  # before cuBLAS starts, for deterministic rows

    def left() -> float:
        return args.budget - (time.perf_counter() - started)

    def save() -> None:  # after every measure: a run cut short keeps what it measured
        if args.details:
            args.details.parent.mkdir(parents=True, exist_ok=True)
            args.details.write_text(json.dumps(details, indent=2, default=str) + "\n")

    with tempfile.TemporaryDirectory(prefix="cxrdet-gpu-train-") as scratch:
        work = Path(scratch)
        prepared = synthetic_prepared(work / "data", counts["train"] + counts["val"], size)
        ids = prepared.images["image_id"].tolist()
        train_ids, val_ids = ids[: counts["train"]], ids[counts["train"] :]
        details["setup_seconds"] = time.perf_counter() - started

        profile = Knobs(
            "profile as is",
            backbone,
            batch,
            runtime.amp,
            runtime.channels_last,
            profile_deterministic,
        )
        fast = replace(profile, label="deterministic off", deterministic=False)
        plan = [
            profile,
            fast,
            replace(fast, label="deterministic off, AMP off (fp32)", amp=False),
            replace(fast, label="deterministic off, channels_last off", channels_last=False),
            replace(fast, label="deterministic off, batch 32", batch=batch * 2),
            replace(profile, label=f"{goal_backbone}", backbone=goal_backbone),
            replace(fast, label=f"{goal_backbone}, deterministic off", backbone=goal_backbone),
            replace(
                fast,
                label=f"{goal_backbone}, deterministic off, batch 32",
                backbone=goal_backbone,
                batch=batch * 2,
            ),
            replace(
                fast,
                label=f"{goal_backbone}, deterministic off, batch 64",
                backbone=goal_backbone,
                batch=batch * 4,
            ),
            replace(
                fast,
                label=f"{goal_backbone}, deterministic off, batch 32, P2 off",
                backbone=goal_backbone,
                batch=batch * 2,
                p2=False,
            ),
        ]
        if quick:
            plan = [fast]
        knobs = {}
        for item in plan if "knobs" in args.parts else []:
            if left() < 0:
                details["skipped"].append(item.label)
                continue
            measure = knob_rate(item, base, prepared, train_ids, device, shape)
            knobs[item.label] = measure
            details["knobs"].append(asdict(measure))
            print(
                f"knobs: {item.label}: {measure.img_s or 0:.1f} img/s, "
                f"{measure.gpu_mem_gib or 0:.1f} GiB {measure.error}",
                flush=True,
            )
            save()

        # 2. the fold path: as the profile is, then with the fastest setting of its own backbone
        def usable(m: Measure | None) -> bool:
            return m is not None and m.img_s is not None

        ours = [
            m
            for m in knobs.values()
            if usable(m)
            and m.settings["backbone"] == backbone
            and m.settings["p2"]
            and m.settings["amp"] == runtime.amp
            and m.settings["channels_last"] == runtime.channels_last
        ]
        best = max(ours, key=lambda m: m.img_s, default=None)
        best_batch = best.settings["batch"] if best else batch
        folds: dict[str, Measure] = {}
        fold_plan = [
            ("fold, deterministic off", False, best_batch),
            ("fold, profile as is", profile_deterministic, batch),
        ]
        if "fold" not in args.parts:
            fold_plan = []
        for label, deterministic, fold_batch in fold_plan[:1] if quick else fold_plan:
            if left() < 0:
                details["skipped"].append(label)
                continue
            rate = (knobs.get(profile.label) if deterministic else best) or None
            per_epoch = counts["train"]
            if not quick and usable(rate):  # ~8 s an epoch: enough steps for a steady rate
                per_epoch = int(min(counts["train"], max(20 * fold_batch, rate.img_s * 8)))
            per_epoch = max(per_epoch // fold_batch, 2) * fold_batch
            params = base.model_copy(
                update={"optim": base.optim.model_copy(update={"batch_size": fold_batch})}
            )
            measure = fold_run(
                label.replace(", ", "-").replace(" ", "_"),
                params,
                runtime.model_copy(update={"deterministic": deterministic}),
                prepared,
                train_ids[:per_epoch],
                val_ids,
                device,
                fold_epochs,
                work / "checkpoints",
            )
            measure.label = label
            folds[label] = measure
            details["fold"].append(asdict(measure))
            print(
                f"{label}: {measure.img_s or 0:.1f} img/s steady, {measure.extra} {measure.error}",
                flush=True,
            )
            save()

        # 3. the loader alone
        for count in workers if "loader" in args.parts else []:
            if left() < 0:
                details["skipped"].append(f"loader, {count} workers")
                continue
            details["loader"][str(count)] = loader_rate(prepared, train_ids, base, count, device)
            print(f"loader, {count} workers: {details['loader'][str(count)]:.1f} img/s", flush=True)
            save()

        # 4. the two-stage family, fastest knobs of the profile's backbone
        two_stage = None
        if "two_stage" not in args.parts:
            pass
        elif left() > 0:
            two_stage = two_stage_rates(
                base, prepared, train_ids, device, replace(fast, batch=batch), shape
            )
            details["two_stage"] = asdict(two_stage)
            print(
                f"two-stage: {two_stage.img_s or 0:.1f} img/s train, "
                f"{two_stage.extra} {two_stage.error}",
                flush=True,
            )
            save()
        else:
            details["skipped"].append("two-stage")

        # 5. where the time of a step goes: the goal's backbone, batch 32, deterministic off
        whole_step = replace(
            fast,
            label=f"{goal_backbone}, batch {batch * 2}: the loop's step",
            backbone=goal_backbone,
            batch=batch * 2,
        )
        pieces = [
            whole_step,
            replace(
                whole_step,
                label=f"{goal_backbone}, batch {batch * 2}: GroupNorm off in the heads",
                head_norm=False,
            ),
            replace(
                whole_step,
                label=f"{goal_backbone}, batch {batch * 2}: model only (trivial loss)",
                mode="model",
            ),
            replace(
                whole_step,
                label=f"{goal_backbone}, batch {batch * 2}: backbone only",
                mode="backbone",
            ),
        ]
        breakdown: dict[str, Measure] = {}
        details["breakdown"] = []
        for item in (pieces[2:3] if quick else pieces) if "breakdown" in args.parts else []:
            if left() < 0:
                details["skipped"].append(f"breakdown: {item.label}")
                continue
            measure = knob_rate(item, base, prepared, train_ids, device, shape)
            breakdown[item.label] = measure
            details["breakdown"].append(asdict(measure))
            print(
                f"breakdown: {item.label}: {measure.img_s or 0:.1f} img/s, "
                f"{measure.gpu_mem_gib or 0:.1f} GiB {measure.error}",
                flush=True,
            )
            save()

    # the projection of one real RSNA fold, for each fold run
    details["projection"] = {}
    for label, measure in folds.items():
        extra = measure.extra
        if not usable(measure) or "tta_img_s" not in extra:
            continue
        seconds = project_fold(
            sizes,
            base.optim.epochs,
            base.freeze_encoder_epochs,
            measure.img_s,
            extra.get("frozen_img_s"),
            extra["val_img_s"],
            extra["tta_img_s"],
            two_stage,
            base.two_stage.optim.epochs,
            extra["tta_views"],
        )
        details["projection"][label] = {k[:-2] + "_h": v / 3600 for k, v in seconds.items()}
    details["seconds"] = time.perf_counter() - started

    rows = []
    reference = knobs.get(profile.label)
    for label, measure in knobs.items():
        rows.append(
            Row(
                f"train img/s, {label}",
                measure.img_s,
                reference.img_s if usable(reference) else None,
                "img/s",
                note=measure.error,
            )
        )
    goal_rows = [
        m
        for m in knobs.values()
        if usable(m) and m.settings["backbone"] == goal_backbone and m.settings["p2"]
    ]
    if goal_rows:
        top = max(goal_rows, key=lambda m: m.img_s)
        rows.append(
            Row(
                f"train img/s vs goal, {top.label}",
                top.img_s,
                GOAL,
                "img/s",
                target=">= 1.0x",
                note=(
                    f"baseline: the issue's goal, {GOAL:.0f} img/s at 512 px "
                    "(se_resnext50-class backbone)"
                ),
            )
        )
    for label, measure in folds.items():
        rows.append(
            Row(
                f"{label}: train img/s (loader, fit)",
                measure.img_s,
                reference.img_s if usable(reference) else None,
                "img/s",
                note=measure.error,
            )
        )
    projections = details["projection"]
    if "fold, profile as is" in projections and "fold, deterministic off" in projections:
        rows.append(
            Row.speedup(
                "RSNA fold, projected",
                projections["fold, deterministic off"]["total_h"],
                projections["fold, profile as is"]["total_h"],
                "h",
                note="ours: deterministic off; baseline: the profile as is",
            )
        )
    if details["loader"]:
        fastest = max(details["loader"].values())
        steady = max((m.img_s for m in folds.values() if usable(m)), default=None)
        rows.append(
            Row(
                "loader img/s vs fit training",
                fastest,
                steady,
                "img/s",
                target=">= 3x",
                note=(
                    f"workers {', '.join(details['loader'])}: the fastest; "
                    "baseline: the faster fold run"
                ),
            )
        )
    whole = breakdown.get(whole_step.label)
    for label, measure in breakdown.items():
        if measure is not whole:
            rows.append(
                Row(
                    f"breakdown, {label}",
                    measure.img_s,
                    whole.img_s if usable(whole) else None,
                    "img/s",
                    note=measure.error or "baseline: the loop's step of the same model and batch",
                )
            )
        elif usable(measure):
            rows.append(Row(f"breakdown, {label}", measure.img_s, None, "img/s"))
    if two_stage is not None and usable(two_stage):
        rows.append(Row("two-stage train img/s, deterministic off", two_stage.img_s, None, "img/s"))
    if details["skipped"]:
        notes.append(
            f"skipped for the time budget ({args.budget:.0f} s): {', '.join(details['skipped'])}"
        )
    notes.append(
        "baseline: the profile as is (its backbone, batch, AMP, channels_last, train.deterministic "
        f"{profile_deterministic}); GPU memory and epochs: --details JSON"
    )
    context = (
        f"profile {details['profile']}, {backbone} (goal: {goal_backbone}), {size} px, "
        f"batch {batch}, {device.type}{' (' + info['gpu'] + ')' if cuda else ''}, "
        f"torch {torch.__version__}"
    )
    emit(Report("gpu_train", context, rows, notes, info), args.json)
    print("\nconfiguration  img/s  GPU GiB (allocated / reserved)")
    for measure in [
        *knobs.values(),
        *folds.values(),
        *([two_stage] if two_stage else []),
        *breakdown.values(),
    ]:
        print(
            f"  {measure.label}: {measure.img_s or 0:.1f}  {measure.gpu_mem_gib or 0:.2f} / "
            f"{measure.gpu_reserved_gib or 0:.2f}  {measure.error}"
        )
    for label, hours in projections.items():
        print(
            f"projected RSNA fold ({label}): "
            + ", ".join(f"{k} {v:.2f} h" for k, v in hours.items())
        )
    save()


if __name__ == "__main__":
    main()
