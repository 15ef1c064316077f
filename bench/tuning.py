"""Ensemble tuning speed: one Optuna trial on cached predictions against re-running the
detector on the same images, per 1,000 images.

    python bench/tuning.py [--quick] [--json OUT]

A trial (cxrdet.tuning.ensemble.score_recipe) reads every TTA view's stored boxes and
classifier probabilities, fuses, shrinks, gates, cuts and scores them; the baseline is
what a trial would cost if it re-ran the detector: the demo RetinaNet (params.yaml
`detector`, random weights) over the same images and TTA views, without the ensemble
work. The cached predictions are synthetic (`synthetic_data`, also used by the tests):
boxes around the truth with jitter, false positives, and classifier probabilities.
The detector runs on 200 images, its time scaled to 1,000 (it is linear in the images);
`--quick` uses 100 images for the trial and 20 for the detector.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrdet.config import TrainParams, load_params
from cxrdet.ensemble import EnsembleRecipe, MemberPredictions
from cxrdet.infer.detector_tta import detection_views, predict_views
from cxrdet.infer.predictor import ArrayImages
from cxrdet.models.retinanet import build_retinanet, decode_config
from cxrdet.tuning.ensemble import TuningData, score_recipe

ROOT = Path(__file__).resolve().parents[1]
VIEWS = ("original", "scale0.8", "scale1.2", "hflip", "hflip_scale0.8", "hflip_scale1.2")
CLASSIFIER_VIEWS = 15
LABELS = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]


def synthetic_data(
    images: int, folds: int = 4, views: tuple[str, ...] = VIEWS, seed: int = 0, size: int = 1024
) -> TuningData:
    """Out-of-fold predictions of `images` RSNA-like images (40% with 1-3 opacities), each
    predicted by one fold model: per view, each truth box found with p 0.85 (jittered, score
    0.3-0.95) plus 0-3 false positives (score 0.01-0.5); two classifiers (2-class and the 3
    RSNA labels) with `CLASSIFIER_VIEWS` noisy views."""
    rng = np.random.default_rng(seed)
    ids = [f"img{k:05d}" for k in range(images)]
    fold = {image_id: k % folds for k, image_id in enumerate(ids)}
    truth_rows, box_rows = [], []
    for image_id in ids:
        count = rng.integers(1, 4) if rng.random() < 0.4 else 0
        xy = rng.uniform(0.1, 0.6, (count, 2)) * size
        wh = rng.uniform(0.1, 0.3, (count, 2)) * size
        truth_rows += [(image_id, *p, *s) for p, s in zip(xy, wh)]
        for view in views:
            for p, s in zip(xy, wh):
                if rng.random() < 0.85:
                    jitter = rng.normal(0, 0.06, 4) * np.r_[s, s]
                    box_rows.append(
                        (
                            image_id,
                            view,
                            *(p + jitter[:2]),
                            *(s + jitter[2:]),
                            rng.uniform(0.3, 0.95),
                        )
                    )
            for _ in range(rng.integers(0, 4)):
                box_rows.append(
                    (
                        image_id,
                        view,
                        *rng.uniform(0, 0.7, 2) * size,
                        *rng.uniform(0.05, 0.3, 2) * size,
                        rng.uniform(0.01, 0.5),
                    )
                )
    truth = pd.DataFrame(truth_rows, columns=["image_id", "x", "y", "w", "h"]).assign(class_id=0)
    boxes = pd.DataFrame(box_rows, columns=["image_id", "view", "x", "y", "w", "h", "score"])
    boxes = boxes.assign(fold=boxes["image_id"].map(fold), model="retinanet", class_id=np.int64(0))
    boxes = boxes[["image_id", "fold", "model", "view", "x", "y", "w", "h", "score", "class_id"]]
    members = pd.DataFrame(
        [(i, fold[i], "retinanet", v) for i in ids for v in views],
        columns=["image_id", "fold", "model", "view"],
    )
    positive = np.isin(ids, truth["image_id"])
    classifier = []
    for model, classes in (("demo_opacity", 2), ("demo_label", 3)):
        for number in range(CLASSIFIER_VIEWS):
            p = np.clip(np.where(positive, 0.75, 0.25) + rng.normal(0, 0.2, images), 0.001, 0.999)
            probs = [
                np.array([1 - q, q]) if classes == 2 else np.array([(1 - q) / 2, (1 - q) / 2, q])
                for q in p
            ]
            classifier.append(
                pd.DataFrame(
                    {
                        "image_id": ids,
                        "fold": [fold[i] for i in ids],
                        "model": model,
                        "view": "original" if number == 0 else f"aug{number}",
                        "opacity": p,
                        "probs": probs,
                    }
                )
            )
    sizes = pd.DataFrame({"image_id": ids, "width": size, "height": size})
    predictions = MemberPredictions(boxes, members, pd.concat(classifier, ignore_index=True), sizes)
    return TuningData(predictions, truth, ids, "rsna", {"demo_label": LABELS})


def trial_seconds(data: TuningData, repeats: int) -> float:
    """Mean seconds of one trial (the untuned params recipe) on `data`."""
    recipe = EnsembleRecipe.from_params(load_params(ROOT / "params.yaml").ensemble.model_dump())
    score_recipe(data, recipe)  # warm-up (imports, caches)
    start = time.perf_counter()
    for _ in range(repeats):
        score_recipe(data, recipe)
    return (time.perf_counter() - start) / repeats


def detector_seconds(images: int, device: torch.device) -> float:
    """Seconds to run the demo detector over `images` images and its TTA views."""
    params = load_params(ROOT / "params.yaml").detector
    torch.manual_seed(0)
    model = build_retinanet(params, num_classes=1, image_classes=3).to(device).eval()
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (params.image_size, params.image_size), dtype=np.uint8)
        for _ in range(images)
    ]
    runtime = TrainParams(device=device.type, progress=False)
    start = time.perf_counter()
    predict_views(
        model,
        ArrayImages([f"b{k}" for k in range(images)], arrays),
        size=params.image_size,
        views=detection_views(params.tta.hflip, params.tta.scales),
        decode_config=decode_config(params),
        batch_size=params.tta.batch_size,
        device=device,
        runtime=runtime,
    )
    return time.perf_counter() - start


def main() -> None:
    from common import (  # bench/common.py; here, as the tests import this file
        Report,
        Row,
        arguments,
        emit,
    )

    parser = arguments(__doc__, "100 images, times extrapolated to 1,000")
    args = parser.parse_args()
    images, detected = (100, 20) if args.quick else (1000, 200)  # network time is linear in images
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ours = trial_seconds(synthetic_data(images), repeats=2 if args.quick else 3) * 1000 / images
    baseline = detector_seconds(detected, device) * 1000 / detected
    row = Row.speedup(
        "one trial vs re-running the detector",
        ours,
        baseline,
        "s / 1k img",
        target=">= 5x",
        note="ratio = trials run in the time of one detector pass (a trial re-running the network "
        "would also need the classifiers)",
    )
    emit(
        Report(
            "tuning",
            f"one trial on {images} images of cached predictions ({len(VIEWS)} detector views, "
            f"{CLASSIFIER_VIEWS} classifier views) vs the demo detector over the same views on "
            f"{detected} images, "
            f"{device.type}, {torch.get_num_threads()} CPU threads",
            [row],
        ),
        args.json,
    )


if __name__ == "__main__":
    main()
