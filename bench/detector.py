"""Detector speed: our RetinaNet against torchvision's stock RetinaNet, side by side.

Both get the same timm backbone (one input channel), FPN width, 4-conv heads, 9 anchors
per location, image size, batch and optimizer; the stock model has levels P3-P7 (it has
no P2). Prints training images/s (ours with P2 on and off), inference images/s without
TTA and with the 6 default views, and a data-loader-only run (augmentation included)
that must be several times faster than training, so loading is never the bottleneck.
`--quick` is the small run the tests use.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import RetinaNet as StockRetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
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
        TimmFpn(name, width), num_classes=1, anchor_generator=AnchorGenerator(sizes, (RATIOS,) * 5),
        min_size=size, max_size=size, image_mean=[PIXEL_MEAN], image_std=[PIXEL_STD],
    )


def our_model(name: str, width: int, p2: bool) -> RetinaNet:
    backbone = create_detector_backbone(name)
    _, strides = pyramid_levels(backbone.feature_info, p2)
    config = RetinaNetConfig(name, 1, anchors_from_base(4, strides, SCALES, RATIOS), p2=p2, fpn_channels=width, head_convs=4)
    return RetinaNet(config, backbone)


def synthetic_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images in [0, 1] with 0-2 bright boxes each (some images without boxes)."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.uniform(0.2, 0.5, (batch, 1, size, size)).astype(np.float32))
    boxes = []
    for k in range(batch):
        xy = rng.uniform(0.1, 0.6, (k % 3, 2)) * size
        wh = rng.uniform(0.08, 0.25, (k % 3, 2)) * size
        found = torch.from_numpy(np.concatenate([xy, xy + wh], axis=1).astype(np.float32)).reshape(-1, 4)
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


def our_step(
    name: str, width: int, p2: bool, device: torch.device, images: torch.Tensor,
    boxes: list[torch.Tensor], labels: list[torch.Tensor],
) -> Callable[[], None]:
    """One training step of our RetinaNet (loss, backward, Adam)."""
    torch.manual_seed(0)
    model = our_model(name, width, p2).to(device).train()
    criterion = RetinaNetLoss(model.box_coder)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)

    def step() -> None:
        loss, _ = criterion(model(images), boxes, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_rates(name: str, size: int, batch: int, width: int, iterations: int, device: torch.device) -> dict[str, float]:
    images, boxes = synthetic_batch(batch, size)
    labels = [torch.zeros(len(b), dtype=torch.int64, device=device) for b in boxes]
    boxes = [b.to(device) for b in boxes]
    normalised = ((images - PIXEL_MEAN) / PIXEL_STD).to(device)
    rates = {
        f"ours_p2={p2}": rate(our_step(name, width, p2, device, normalised, boxes, labels), batch, iterations, device)
        for p2 in (True, False)
    }
    torch.manual_seed(0)
    stock = stock_model(name, size, width).to(device).train()
    optimizer = torch.optim.Adam(stock.parameters(), 1e-4)
    stock_images = list(images.to(device))
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]

    def baseline() -> None:
        loss = sum(stock(stock_images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rates["stock"] = rate(baseline, batch, iterations, device)
    return rates


class InMemoryImages:
    """CachedImages' interface over arrays (inference without disk reads)."""

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays
        self.image_ids = [f"bench{k}" for k in range(len(arrays))]

    def __len__(self) -> int:
        return len(self.arrays)

    def read(self, index: int, size: int) -> np.ndarray:
        return self.arrays[index]


def inference_rates(name: str, size: int, batch: int, width: int, iterations: int, device: torch.device) -> dict[str, float]:
    images, _ = synthetic_batch(batch, size)
    normalised = ((images - PIXEL_MEAN) / PIXEL_STD).to(device)
    torch.manual_seed(0)
    model = our_model(name, width, p2=False).to(device).eval()  # the stock model has no P2
    stock = stock_model(name, size, width).to(device).eval()
    stock_images = list(images.to(device))
    config = DecodeConfig()

    @torch.inference_mode()
    def ours() -> None:
        decode(model(normalised), model.box_coder, (size, size), config)

    @torch.inference_mode()
    def baseline() -> None:
        stock(stock_images)

    arrays = (images[:, 0].numpy() * 255).astype(np.uint8)
    views = detection_views(True, [0.8, 1.0, 1.2])
    runtime = TrainParams(device=device.type, progress=False, channels_last=False)

    def tta() -> None:
        predict_views(model, InMemoryImages(arrays), size=size, views=views, decode_config=config,
                      batch_size=batch, device=device, runtime=runtime)

    return {
        "ours": rate(ours, batch, iterations, device),
        "stock": rate(baseline, batch, iterations, device),
        "ours_tta": rate(tta, batch, max(1, iterations // 2), device),
    }


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
        table = pd.DataFrame({"image_id": ids, "cache_path": [f"cache/{i}.png" for i in ids], "width": size, "height": size})
        boxes = pd.DataFrame({"image_id": ids, "x": size * 0.3, "y": size * 0.4, "w": size * 0.2, "h": size * 0.15, "class_id": 0})
        prepared = Prepared(root, table, boxes, pd.DataFrame({"image_id": ids}), {})
        dataset = DetectionDataset(
            CachedImages(prepared, ids), table, boxes, np.zeros(count), size, detector_augmentation(BoxAugmentSettings())
        )
        loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate_detection)
        next(iter(loader))  # worker start-up is not throughput
        start = time.perf_counter()
        seen = sum(len(b["image"]) for b in loader)
        return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    parser.add_argument("--backbone", default=None, help="timm name (default resnet18; quick: regnetx_002)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 256; quick: 128)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 8; quick: 4)")
    parser.add_argument("--iterations", type=int, default=None, help="timed steps (default 5; quick: 2)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (params: train.workers)")
    parser.add_argument("--width", type=int, default=None, help="FPN and head channels (default 256; quick: 64)")
    args = parser.parse_args()
    quick = args.quick
    name = args.backbone or ("regnetx_002" if quick else "resnet18")
    size = args.size or (128 if quick else 256)
    batch = args.batch or (4 if quick else 8)
    iterations = args.iterations or (2 if quick else 5)
    width = args.width or (64 if quick else 256)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = train_rates(name, size, batch, width, iterations, device)
    infer = inference_rates(name, size, batch, width, iterations, device)
    loader = loader_rate(size, batch, max(iterations, 4), args.workers)
    print(f"detector: {name}, {size}px, batch {batch}, FPN/head width {width}, {device.type}, "
          f"{torch.get_num_threads()} CPU threads, loader workers {args.workers}")
    rows = [
        ("train img/s, P2 on", train["ours_p2=True"], train["stock"], ">= 0.9"),
        ("train img/s, P2 off", train["ours_p2=False"], train["stock"], ">= 1.0"),
        ("infer img/s, P2 off", infer["ours"], infer["stock"], ">= 1.0"),
        ("infer img/s, 6-view TTA", infer["ours_tta"], infer["ours"], "~0.15"),
        ("loader img/s", loader, train["ours_p2=True"], ">= 3"),
    ]
    print(f"{'measure':<24}{'ours':>10}{'baseline':>10}{'ratio':>8}{'target':>9}")
    for measure, ours, baseline, target in rows:
        print(f"{measure:<24}{ours:>10.1f}{baseline:>10.1f}{ours / baseline:>8.2f}{target:>9}")
    print("baselines: torchvision RetinaNet (P3-P7) for train/infer; ours without TTA for 6 views; our training (P2 on) for the loader")


if __name__ == "__main__":
    main()
