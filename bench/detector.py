"""Detector speed: our RetinaNet against torchvision's stock RetinaNet, and our two-stage
detector against torchvision's stock Faster R-CNN, side by side.

Both get the same timm backbone (one input channel), FPN width, 4-conv heads, 9 anchors
per location, image size, batch and optimizer; the stock model has levels P3-P7 (it has
no P2). Prints training images/s (ours with P2 on and off), inference images/s without
TTA and with the 6 default views, and a data-loader-only run (augmentation included)
that must be several times faster than training, so loading is never the bottleneck.
The two-stage detector (deformable C5 on and off, no relation module) and the stock Faster
R-CNN share the timm backbone + FPN body (P3-P6), one anchor size per level x 3 ratios,
1000 proposals, the 1024-wide two-fc box head and 7x7 RoIAlign; training and inference images/s.

Each RetinaNet training measure runs in a freshly spawned process, which also reports its
peak RSS (ours and stock side by side). `--modes` adds rows for AMP (the training loop's
autocast dtype: bf16 where supported, else fp16 with a gradient scaler), channels_last and
both, for ours and the stock RetinaNet; on CUDA all four modes run by default, on CPU only
fp32 (the training loop runs fp32 there), unless asked for.

    python bench/detector.py [--quick] [--json OUT] [--device cuda] [--modes fp32 amp ...]

`--quick` is the small run the tests use.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN as StockFasterRCNN
from torchvision.models.detection import RetinaNet as StockRetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from cxrdet.config import TrainParams
from cxrdet.data.box_augment import BoxAugmentSettings, detector_augmentation
from cxrdet.data.datasets import PIXEL_MEAN, PIXEL_STD, CachedImages, Prepared
from cxrdet.data.detection import DetectionDataset, collate_detection
from cxrdet.infer.detector_tta import detection_views, predict_views
from cxrdet.models.anchors import anchors_from_base
from cxrdet.models.retinanet import (
    DecodeConfig,
    RetinaNet,
    RetinaNetConfig,
    RetinaNetLoss,
    create_detector_backbone,
    decode,
    pyramid_levels,
)
from cxrdet.models.two_stage import FpnBody, TwoStageConfig, TwoStageDetector
from cxrdet.runtime.device import amp_dtype

from common import Measured, Report, Row, arguments, emit, in_child, median_of_repeats

SCALES, RATIOS = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0)  # 9 anchors, the reference's


class TimmFpn(nn.Module):
    """A timm backbone + torchvision's FPN (P3-P7), in the form torchvision's RetinaNet expects."""

    def __init__(self, name: str, width: int) -> None:
        super().__init__()
        self.body = create_detector_backbone(name)
        self.levels, _ = pyramid_levels(self.body.feature_info, p2=False)
        channels = [self.body.feature_info.channels()[i] for i in self.levels]
        self.fpn = FeaturePyramidNetwork(channels, width, extra_blocks=LastLevelP6P7(width, width))
        self.out_channels = width

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict((str(i), features[i]) for i in self.levels))


def stock_model(name: str, size: int, width: int) -> StockRetinaNet:
    sizes = tuple(tuple(s * scale for scale in SCALES) for s in (32, 64, 128, 256, 512))
    return StockRetinaNet(
        TimmFpn(name, width),
        num_classes=1,
        anchor_generator=AnchorGenerator(sizes, (RATIOS,) * 5),
        min_size=size,
        max_size=size,
        image_mean=[PIXEL_MEAN],
        image_std=[PIXEL_STD],
    )


def our_model(name: str, width: int, p2: bool) -> RetinaNet:
    backbone = create_detector_backbone(name)
    _, strides = pyramid_levels(backbone.feature_info, p2)
    config = RetinaNetConfig(
        name,
        1,
        anchors_from_base(4, strides, SCALES, RATIOS),
        p2=p2,
        fpn_channels=width,
        head_convs=4,
    )
    return RetinaNet(config, backbone)


def synthetic_batch(
    batch: int, size: int, seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images in [0, 1] with 0-2 bright boxes each (some images without boxes)."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.uniform(0.2, 0.5, (batch, 1, size, size)).astype(np.float32))
    boxes = []
    for k in range(batch):
        xy = rng.uniform(0.1, 0.6, (k % 3, 2)) * size
        wh = rng.uniform(0.08, 0.25, (k % 3, 2)) * size
        found = torch.from_numpy(np.concatenate([xy, xy + wh], axis=1).astype(np.float32)).reshape(
            -1, 4
        )
        for x0, y0, x1, y1 in found.round().int().tolist():
            images[k, 0, y0:y1, x0:x1] = 0.9
        boxes.append(found)
    return images, boxes


def rate(step: Callable[[], None], images: int, iterations: int, device: torch.device) -> float:
    """Images per second of `step`, after one warm-up call."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images * iterations / (time.perf_counter() - start)


def precision(device: torch.device, amp: bool) -> torch.dtype | None:
    """The training loop's autocast dtype (bf16 where supported, else fp16); on CPU, asked
    for explicitly, bf16 autocast."""
    if not amp:
        return None
    return amp_dtype(device, True) if device.type == "cuda" else torch.bfloat16


def autocasting(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    return (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )


def train_rate(
    kind: str,
    name: str,
    size: int,
    batch: int,
    width: int,
    iterations: int,
    device_type: str,
    amp: bool = False,
    channels_last: bool = False,
) -> float:
    """Training images/s (loss, backward, Adam) of one model: `ours_p2` / `ours` (our RetinaNet,
    P2 on / off) or `stock` (torchvision's RetinaNet), as the training loop runs them: autocast
    around the loss, a gradient scaler for fp16, NHWC weights and inputs for channels_last."""
    device = torch.device(device_type)
    dtype = precision(device, amp)
    images, boxes = synthetic_batch(batch, size)
    labels = [torch.zeros(len(b), dtype=torch.int64, device=device) for b in boxes]
    boxes = [b.to(device) for b in boxes]
    torch.manual_seed(0)
    if kind == "stock":
        model = stock_model(name, size, width).to(device).train()
        stock_images = list(images.to(device))
        targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]

        def loss_of() -> torch.Tensor:
            return sum(model(stock_images, targets).values())
    else:
        model = our_model(name, width, p2=kind == "ours_p2").to(device).train()
        criterion = RetinaNetLoss(model.box_coder)
        normalised = ((images - PIXEL_MEAN) / PIXEL_STD).to(device)
        if channels_last:
            normalised = normalised.contiguous(memory_format=torch.channels_last)

        def loss_of() -> torch.Tensor:
            return criterion(model(normalised), boxes, labels)[0]

    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        with autocasting(device, dtype):
            loss = loss_of()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return rate(step, batch, iterations, device)


class InMemoryImages:
    """CachedImages' interface over arrays (inference without disk reads)."""

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays
        self.image_ids = [f"bench{k}" for k in range(len(arrays))]

    def __len__(self) -> int:
        return len(self.arrays)

    def read(self, index: int, size: int) -> np.ndarray:
        return self.arrays[index]


def inference_rates(
    name: str,
    size: int,
    batch: int,
    width: int,
    iterations: int,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    tta: bool = True,
) -> dict[str, float]:
    """Inference images/s of our RetinaNet (P2 off, decoding included), the stock one and,
    with `tta`, ours over the 6 default views (the predict_views path the stages use)."""
    dtype = precision(device, amp)
    images, _ = synthetic_batch(batch, size)
    normalised = ((images - PIXEL_MEAN) / PIXEL_STD).to(device)
    torch.manual_seed(0)
    model = our_model(name, width, p2=False).to(device).eval()  # the stock model has no P2
    stock = stock_model(name, size, width).to(device).eval()
    stock_images = list(images.to(device))
    if channels_last:
        model.to(memory_format=torch.channels_last)
        stock.to(memory_format=torch.channels_last)
        normalised = normalised.contiguous(memory_format=torch.channels_last)
    config = DecodeConfig()

    @torch.inference_mode()
    def ours() -> None:
        with autocasting(device, dtype):
            outputs = model(normalised)
        decode(outputs, model.box_coder, (size, size), config)

    @torch.inference_mode()
    def baseline() -> None:
        with autocasting(device, dtype):
            stock(stock_images)

    rates = {
        "ours": rate(ours, batch, iterations, device),
        "stock": rate(baseline, batch, iterations, device),
    }
    if tta:
        arrays = (images[:, 0].numpy() * 255).astype(np.uint8)
        views = detection_views(True, [0.8, 1.0, 1.2])
        runtime = TrainParams(
            device=device.type, progress=False, amp=amp, channels_last=channels_last
        )

        def with_views() -> None:
            predict_views(
                model,
                InMemoryImages(arrays),
                size=size,
                views=views,
                decode_config=config,
                batch_size=batch,
                device=device,
                runtime=runtime,
            )

        rates["ours_tta"] = rate(with_views, batch, max(1, iterations // 2), device)
    return rates


PROPOSALS = 1000  # RPN proposals per image, both two-stage models, training and inference


def our_two_stage(name: str, width: int, deformable: bool) -> TwoStageDetector:
    backbone = create_detector_backbone(name)
    levels, strides = pyramid_levels(backbone.feature_info, p2=False)
    anchors = anchors_from_base(4, strides[: len(levels) + 1], (1.0,), RATIOS)
    config = TwoStageConfig(
        name,
        1,
        anchors,
        p2=False,
        fpn_channels=width,
        deformable=(5,) if deformable else (),
        proposals=PROPOSALS,
    )
    return TwoStageDetector(config, backbone)


def stock_two_stage(name: str, size: int, width: int) -> StockFasterRCNN:
    body = FpnBody(create_detector_backbone(name), p2=False, width=width)
    sizes = tuple((4 * stride,) for stride in body.strides)
    return StockFasterRCNN(
        body,
        num_classes=2,
        rpn_anchor_generator=AnchorGenerator(sizes, (RATIOS,) * len(sizes)),
        box_roi_pool=MultiScaleRoIAlign(body.names, output_size=7, sampling_ratio=2),
        rpn_pre_nms_top_n_train=PROPOSALS,
        rpn_pre_nms_top_n_test=PROPOSALS,
        rpn_post_nms_top_n_train=PROPOSALS,
        rpn_post_nms_top_n_test=PROPOSALS,
        min_size=size,
        max_size=size,
        image_mean=[PIXEL_MEAN],
        image_std=[PIXEL_STD],
    )


def two_stage_rates(
    name: str, size: int, batch: int, width: int, iterations: int, device: torch.device
) -> dict[str, float]:
    """Training and inference images/s of our two-stage detector (deformable on, off) and the stock
    Faster R-CNN."""
    images, boxes = synthetic_batch(batch, size)
    boxes = [b.to(device) for b in boxes]
    normalised = ((images - PIXEL_MEAN) / PIXEL_STD).to(device)
    ours_targets = [
        {"boxes": b, "labels": torch.zeros(len(b), dtype=torch.int64, device=device)} for b in boxes
    ]
    stock_targets = [
        {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64, device=device)} for b in boxes
    ]  # 0: background
    stock_images = list(images.to(device))
    rates: dict[str, float] = {}
    models: dict[str, tuple[nn.Module, Callable[[], Any], Callable[[], Any]]] = {}
    for deformable in (True, False):
        torch.manual_seed(0)
        model = our_two_stage(name, width, deformable).to(device)
        models[f"ours_deformable={deformable}"] = (
            model,
            lambda m=model: m(normalised, ours_targets),
            lambda m=model: m.detect(normalised, (size, size), DecodeConfig()),
        )
    torch.manual_seed(0)
    stock = stock_two_stage(name, size, width).to(device)
    models["stock"] = (
        stock,
        lambda: stock(stock_images, stock_targets),
        lambda: stock(stock_images),
    )
    for key, (model, losses, infer) in models.items():
        optimizer = torch.optim.Adam(model.parameters(), 1e-4)

        def step(
            model: nn.Module = model,
            losses: Callable[[], Any] = losses,
            optimizer: torch.optim.Optimizer = optimizer,
        ) -> None:
            model.train()
            loss = sum(losses().values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.inference_mode()
        def predict(model: nn.Module = model, infer: Callable[[], Any] = infer) -> None:
            model.eval()
            infer()

        rates[f"train_{key}"] = rate(step, batch, iterations, device)
        rates[f"infer_{key}"] = rate(predict, batch, iterations, device)
    return rates


def loader_rate(size: int, batch: int, iterations: int, workers: int) -> float:
    """Images/s of the training loader alone: PNG reads, 8-point affine and the rest, collation."""
    count = batch * iterations
    arrays = (synthetic_batch(count, size)[0][:, 0].numpy() * 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cache").mkdir()
        ids = [f"img{k}" for k in range(count)]
        for image_id, array in zip(ids, arrays):
            cv2.imwrite(str(root / "cache" / f"{image_id}.png"), array)
        table = pd.DataFrame(
            {
                "image_id": ids,
                "cache_path": [f"cache/{i}.png" for i in ids],
                "width": size,
                "height": size,
            }
        )
        boxes = pd.DataFrame(
            {
                "image_id": ids,
                "x": size * 0.3,
                "y": size * 0.4,
                "w": size * 0.2,
                "h": size * 0.15,
                "class_id": 0,
            }
        )
        prepared = Prepared(root, table, boxes, pd.DataFrame({"image_id": ids}), {})
        dataset = DetectionDataset(
            CachedImages(prepared, ids),
            table,
            boxes,
            np.zeros(count),
            size,
            detector_augmentation(BoxAugmentSettings()),
        )
        loader = DataLoader(
            dataset, batch_size=batch, num_workers=workers, collate_fn=collate_detection
        )
        next(iter(loader))  # worker start-up is not throughput
        start = time.perf_counter()
        seen = sum(len(b["image"]) for b in loader)
        return seen / (time.perf_counter() - start)


MODES = {
    "fp32": (False, False),
    "amp": (True, False),
    "channels_last": (False, True),
    "amp+channels_last": (True, True),
}


def measure(modes: list[str], shape: tuple, device: torch.device, workers: int) -> list[Row]:
    """Every row once: each mode's training (spawned processes) and inference, ours and stock;
    in fp32 also TTA, the loader and the two-stage family. main() repeats this and keeps the
    medians, since one short timing on a shared CPU swings by several times."""
    _, size, batch, _, iterations, _ = shape

    def train(kind: str, mode: str) -> Measured:
        """A short training of one model in a spawned process: images/s and its peak RSS."""
        return in_child(train_rate, kind, *shape, *MODES[mode])

    rows: list[Row] = []
    for mode in modes:
        amp, channels_last = MODES[mode]
        suffix = "" if mode == "fp32" else f", {mode}"
        stock = train("stock", mode)
        kinds = ["ours_p2", "ours"] if mode == "fp32" else ["ours"]
        for kind in kinds:
            ours = train(kind, mode)
            p2 = "on" if kind == "ours_p2" else "off"
            rows.append(
                Row(
                    f"train img/s, P2 {p2}{suffix}",
                    ours.result,
                    stock.result,
                    "img/s",
                    target=">= 0.9x" if p2 == "on" else ">= 1.0x",
                    ours_rss_mb=ours.peak_rss_mb,
                    baseline_rss_mb=stock.peak_rss_mb,
                )
            )
            if kind == "ours_p2":
                trained = ours.result
        infer = inference_rates(
            *shape[:-1], device, amp=amp, channels_last=channels_last, tta=mode == "fp32"
        )
        rows.append(
            Row(
                f"infer img/s, P2 off{suffix}",
                infer["ours"],
                infer["stock"],
                "img/s",
                target=">= 1.0x",
            )
        )
        if mode == "fp32":
            rows.append(
                Row(
                    "infer img/s, 6-view TTA",
                    infer["ours_tta"],
                    infer["ours"],
                    "img/s",
                    target="~0.15x",
                    note="baseline: ours without TTA",
                )
            )
            loader = loader_rate(size, batch, max(iterations, 4), workers)
            rows.append(
                Row(
                    "loader img/s vs training",
                    loader,
                    trained,
                    "img/s",
                    target=">= 3x",
                    note=(
                        "the training loader alone (PNG reads, augmentation, collation; "
                        f"{workers} workers) vs our training (P2 on): loading must never be "
                        "the bottleneck"
                    ),
                )
            )
            two_stage = two_stage_rates(*shape[:-1], device)
            for phase in ("train", "infer"):
                for deformable in (True, False):
                    rows.append(
                        Row(
                            f"2-stage {phase} img/s, DCN {'on' if deformable else 'off'}",
                            two_stage[f"{phase}_ours_deformable={deformable}"],
                            two_stage[f"{phase}_stock"],
                            "img/s",
                            target=">= 0.7x" if deformable else ">= 0.9x",
                        )
                    )
    return rows


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument(
        "--backbone", default=None, help="timm name (default resnet18; quick: regnetx_002)"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image side (default 256; quick: 128)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="images per step (default 8; quick: 4)"
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="timed steps after one warm-up (default 5; quick: 1)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of every measure; rows are their medians (default 3; quick: 1)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="loader workers (params: train.workers)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help="FPN and head channels (default 256; quick: 64)"
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=None,
        help="precision / memory-format rows, ours and stock RetinaNet each (default: all on CUDA, "
        "fp32 on CPU; asked for on CPU, amp is bf16 autocast)",
    )
    args = parser.parse_args()
    quick = args.quick
    name = args.backbone or ("regnetx_002" if quick else "resnet18")
    size = args.size or (128 if quick else 256)
    batch = args.batch or (4 if quick else 8)
    iterations = args.iterations or (1 if quick else 5)
    width = args.width or (64 if quick else 256)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    notes = []
    modes = args.modes or (list(MODES) if cuda else ["fp32"])
    if not cuda and args.modes is None:
        notes.append(
            "AMP and channels_last rows skipped: no CUDA device (the training loop runs fp32 on "
            "CPU); --modes amp channels_last forces them on CPU (bf16 autocast, NHWC)"
        )
    shape = (name, size, batch, width, iterations, device.type)
    repeats_n = args.repeats or (1 if quick else 3)
    repeats = [measure(modes, shape, device, args.workers) for _ in range(repeats_n)]
    rows = median_of_repeats(repeats)
    notes.append(
        "baselines: torchvision RetinaNet (P3-P7, same backbone, size, batch) for train/infer; "
        "torchvision Faster R-CNN (same body, anchors, proposals, head) for 2-stage; training rows "
        "each ran in a spawned process (peak RSS ours / stock)"
    )
    gpu = f" ({torch.cuda.get_device_name(device)})" if cuda else ""
    emit(
        Report(
            "detector",
            f"{name}, {size} px, batch {batch}, FPN/head width {width}, {device.type}{gpu}, "
            f"{torch.get_num_threads()} CPU threads, loader workers {args.workers}, "
            f"modes {' '.join(modes)}, median of {repeats_n} repeat(s)",
            rows,
            notes,
        ),
        args.json,
    )


if __name__ == "__main__":
    main()
