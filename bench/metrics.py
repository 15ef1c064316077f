"""Speed of the vectorised metrics against straightforward per-pair Python versions.

    python bench/metrics.py [--quick] [--json OUT]

The baselines below follow the definitions in REFERENCE.md box pair by box pair, the
way a first implementation would; the bench checks that both give the same score
before it compares times (exit 1 if they differ). tests/test_metrics_*.py reuse them as
reference implementations.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pandas as pd

from cxrdet.metrics import RSNA_THRESHOLDS, rsna_score, vinbigdata_score, with_no_finding_boxes

# The RSNA score walks 8 thresholds x every prediction x every truth box of an image, so
# the per-pair loop is what vectorising removes. VinBigData's per-pair work is light
# (about 0.2 truth boxes per image and class): its row is for information.
RSNA_TARGET_RATIO = 10.0


def pair_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two x, y, w, h boxes; 0 when the union has no area."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    return iw * ih / union if union > 0 else 0.0


def _rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return list(frame[columns].itertuples(index=False, name=None))


def _by_key(rows: list[tuple], width: int) -> dict:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row[:width] if width > 1 else row[0]].append(row[width:])
    return grouped


def _confidence_sorted(rows: list[tuple]) -> list[tuple]:
    """Rows (x, y, w, h, score) by descending score, ties by x_min, y_min, x_max, y_max
    as in cxrdet.metrics.iou.confidence_order."""
    return sorted(rows, key=lambda r: (-r[4], r[0], r[1], r[0] + r[2], r[1] + r[3]))


def baseline_rsna(truth: pd.DataFrame, predictions: pd.DataFrame) -> float:
    """Official RSNA score, one box pair at a time."""
    gts = _by_key(_rows(truth, ["image_id", "x", "y", "w", "h"]), 1)
    preds = _by_key(_rows(predictions, ["image_id", "x", "y", "w", "h", "score"]), 1)
    image_scores = []
    for image_id in set(gts) | set(preds):
        boxes_true, boxes_pred = gts.get(image_id, []), _confidence_sorted(preds.get(image_id, []))
        total = 0.0
        for t in RSNA_THRESHOLDS:
            matched: set[int] = set()
            tp = 0
            for p in boxes_pred:
                best, best_iou = None, t
                for j, g in enumerate(boxes_true):
                    iou = pair_iou(p, g)
                    if j not in matched and iou > best_iou:
                        best, best_iou = j, iou
                if best is not None:
                    matched.add(best)
                    tp += 1
            total += tp / (len(boxes_true) + len(boxes_pred) - tp)
        image_scores.append(total / len(RSNA_THRESHOLDS))
    return sum(image_scores) / len(image_scores)


def baseline_rsna_kernel(truth: pd.DataFrame, predictions: pd.DataFrame) -> float:
    """The public kernel port's RSNA score: truth boxes in the given order, each taking
    the first unmatched prediction (descending confidence) with IoU >= t."""
    gts = _by_key(_rows(truth, ["image_id", "x", "y", "w", "h"]), 1)
    preds = _by_key(_rows(predictions, ["image_id", "x", "y", "w", "h", "score"]), 1)
    image_scores = []
    for image_id in set(gts) | set(preds):
        boxes_true, boxes_pred = gts.get(image_id, []), _confidence_sorted(preds.get(image_id, []))
        total = 0.0
        for t in RSNA_THRESHOLDS:
            matched: set[int] = set()
            tp = fn = 0
            for g in boxes_true:
                for j, p in enumerate(boxes_pred):
                    if j not in matched and pair_iou(g, p) >= t:
                        matched.add(j)
                        tp += 1
                        break
                else:
                    fn += 1
            total += tp / (tp + fn + len(boxes_pred) - len(matched))
        image_scores.append(total / len(RSNA_THRESHOLDS))
    return sum(image_scores) / len(image_scores)


def baseline_vinbigdata(truth: pd.DataFrame, predictions: pd.DataFrame) -> float:
    """VOC 2010 mAP at IoU > 0.4, one box pair at a time (py-faster-rcnn voc_eval)."""
    truth = with_no_finding_boxes(truth, truth["image_id"].astype(str).unique())
    gts = _by_key(_rows(truth, ["class_id", "image_id", "x", "y", "w", "h"]), 2)
    preds = _by_key(_rows(predictions, ["class_id", "image_id", "x", "y", "w", "h", "score"]), 1)
    aps = []
    for cls in sorted({key[0] for key in gts}):
        n_pos = sum(len(v) for k, v in gts.items() if k[0] == cls)
        ranked = sorted(
            preds.get(cls, []),
            key=lambda r: (-r[5], r[0], r[1], r[2], r[1] + r[3], r[2] + r[4]),
        )
        used: set[tuple] = set()
        tp_flags = []
        for image_id, *box, _ in ranked:
            boxes_true = gts.get((cls, image_id), [])
            ious = [pair_iou(box, g) for g in boxes_true]
            best = max(range(len(ious)), key=ious.__getitem__) if ious else None
            hit = best is not None and ious[best] > 0.4 and (image_id, best) not in used
            if hit:
                used.add((image_id, best))
            tp_flags.append(hit)
        aps.append(_voc_ap_loop(tp_flags, n_pos))
    return sum(aps) / len(aps)


def _voc_ap_loop(tp_flags: list[bool], n_pos: int) -> float:
    tp = 0
    recall, precision = [0.0], [0.0]
    for k, hit in enumerate(tp_flags, start=1):
        tp += hit
        recall.append(tp / n_pos)
        precision.append(tp / k)
    recall.append(1.0)
    precision.append(0.0)
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    return sum(
        (recall[i + 1] - recall[i]) * precision[i + 1]
        for i in range(len(recall) - 1)
        if recall[i + 1] != recall[i]
    )


def synthetic(n_images: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """~3 truth boxes and ~10 predictions per image (jittered truths plus noise), with
    classes 0-13 and some images without boxes."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"img{i:05d}" for i in range(n_images)])
    n_truth = rng.poisson(3, n_images)
    truth_ids = np.repeat(ids, n_truth)
    xy = rng.uniform(0, 800, (len(truth_ids), 2))
    wh = rng.uniform(30, 200, (len(truth_ids), 2))
    truth = pd.DataFrame(
        {"image_id": truth_ids, "x": xy[:, 0], "y": xy[:, 1], "w": wh[:, 0], "h": wh[:, 1]}
    )
    truth["class_id"] = rng.integers(0, 14, len(truth))
    near = truth.sample(frac=2.0, replace=True, random_state=seed)
    near[["x", "y"]] += rng.normal(0, 15, (len(near), 2))
    near[["w", "h"]] *= rng.uniform(0.8, 1.2, (len(near), 2))
    n_noise = rng.poisson(4, n_images)
    noise_xy = rng.uniform(0, 800, (n_noise.sum(), 2))
    noise_wh = rng.uniform(30, 200, (n_noise.sum(), 2))
    noise = pd.DataFrame(
        {
            "image_id": np.repeat(ids, n_noise),
            "x": noise_xy[:, 0],
            "y": noise_xy[:, 1],
            "w": noise_wh[:, 0],
            "h": noise_wh[:, 1],
            "class_id": rng.integers(0, 15, n_noise.sum()),
        }
    )
    predictions = pd.concat([near, noise], ignore_index=True)
    predictions["score"] = rng.random(len(predictions))
    return truth, predictions


def best_time(fn: Callable[[], float], repeat: int) -> tuple[float, float]:
    """(best wall time in seconds, result) over `repeat` runs."""
    times, result = [], 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    from common import (
        Report,
        Row,
        arguments,
        emit,
    )  # bench/common.py; here, as the tests import this file

    parser = arguments(__doc__.splitlines()[0], "1,000 images, one timing each")
    args = parser.parse_args(argv)
    n_images = 1000 if args.quick else 3000
    repeat = 1 if args.quick else 3
    truth, predictions = synthetic(n_images)
    # (measure, ours, baseline, target ratio or None when the row is for information)
    cases = [
        (
            "RSNA score (official)",
            lambda: rsna_score(truth, predictions).score,
            lambda: baseline_rsna(truth, predictions),
            RSNA_TARGET_RATIO,
        ),
        (
            "RSNA score (kernel)",
            lambda: rsna_score(truth, predictions, variant="kernel").score,
            lambda: baseline_rsna_kernel(truth, predictions),
            RSNA_TARGET_RATIO,
        ),
        (
            "VinBigData mAP@0.4",
            lambda: vinbigdata_score(truth, predictions).score,
            lambda: baseline_vinbigdata(truth, predictions),
            None,
        ),
    ]
    rows = []
    for name, ours, baseline, target in cases:
        ours_s, ours_score = best_time(ours, repeat)
        base_s, base_score = best_time(baseline, repeat)
        if not np.isclose(ours_score, base_score, rtol=0, atol=1e-9):
            print(
                f"{name}: scores differ: ours {ours_score!r}, baseline {base_score!r}",
                file=sys.stderr,
            )
            return 1
        # Timings vary with the machine's load: a missed target is reported, not fatal.
        rows.append(
            Row.speedup(
                name,
                ours_s,
                base_s,
                target=f">= {target:g}x" if target else "",
                note=f"score {ours_score:.4f} (both)",
            )
        )
    emit(
        Report(
            "metrics",
            f"{n_images} images, {len(truth)} truth boxes, {len(predictions)} predictions, best of "
            f"{repeat}; baseline: the per-pair Python loops above (same score checked); "
            "ratio = baseline / ours",
            rows,
        ),
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
