"""The RSNA 1st place's greedy vote merge of several members' boxes.

Boxes are visited by descending score. An unused box opens a cluster; every other
member adds its unused box of highest IoU (> iou_thr) with it. The merged box is the
mean of the cluster's x, y, w, h and confidence, weighted by confidence (times the
member's weight); its votes are the sum of the members' normalised weights, and its
score is the merged confidence x votes: a box few members agree on loses confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cxrdet.ensemble.group import BoxGroup
from cxrdet.ensemble.tables import check_number
from cxrdet.metrics.iou import pairwise_iou


@dataclass(frozen=True)
class VoteMerge:
    iou_thr: float = 0.4  # 1st place: a member's box joins with IoU > 0.4
    needs_sizes: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_number("iou_thr", self.iou_thr, 0.0, 1.0, high_open=True)

    def fuse(self, group: BoxGroup) -> tuple[np.ndarray, np.ndarray]:
        return vote_merge(group.xyxy, group.scores, group.members, group.weights, self.iou_thr)


def vote_merge(
    xyxy: np.ndarray, scores: np.ndarray, members: np.ndarray, weights: np.ndarray, iou_thr: float
) -> tuple[np.ndarray, np.ndarray]:
    """(merged xyxy (k, 4), scores (k,)) of one image and class; see the module docstring."""
    share = weights / weights.sum()
    order = np.argsort(-scores, kind="stable")
    xyxy, scores, members = xyxy[order], scores[order], members[order]
    iou = pairwise_iou(xyxy, xyxy)
    linked = (iou > iou_thr) & (members[:, None] != members[None, :])
    lonely = ~linked.any(axis=1)
    cluster = np.full(len(scores), -1)
    clusters = 0
    for i in range(len(scores)):
        if cluster[i] >= 0:
            continue
        cluster[i] = clusters
        if not lonely[i]:  # most boxes have no partner at all: skip the search
            candidates = np.flatnonzero(linked[i] & (cluster < 0))
            if candidates.size:
                cluster[_best_per_member(candidates, iou[i], members)] = clusters
        clusters += 1
    # Weighted means of every cluster at once: weight = member share x confidence.
    weight = share[members] * scores
    total = np.bincount(cluster, weight)
    merged = np.stack([np.bincount(cluster, weight * xyxy[:, k]) for k in range(4)], axis=1)
    confidence = np.bincount(cluster, weight * scores) / total
    votes = np.bincount(cluster, share[members])
    return merged / total[:, None], confidence * votes


def _best_per_member(candidates: np.ndarray, iou: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Of each member's candidates, the one of highest IoU (on a tie the higher-scoring one:
    candidates come by descending score and the sort is stable)."""
    ranked = candidates[np.lexsort((-iou[candidates], members[candidates]))]
    owner = members[ranked]
    return ranked[np.r_[True, owner[1:] != owner[:-1]]]
