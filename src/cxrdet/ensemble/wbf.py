"""Weighted boxes fusion through the `ensemble_boxes` package.

ensemble_boxes wants coordinates normalised to [0, 1] and clips others with only a
warning, skips zero-area boxes with a warning, and exits the interpreter on an unknown
conf_type (PITFALLS). So boxes are normalised by their image's size, clipped, and boxes
without area or below the skip threshold are dropped here, before it sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from cxrdet.ensemble.group import BoxGroup
from cxrdet.ensemble.tables import EnsembleInputError, check_choice, check_number

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


@dataclass(frozen=True)
class WeightedBoxesFusion:
    # VinBigData: the 2nd place fused at IoU 0.4, the 1st tuned 0.33-0.4 (package default 0.55).
    iou_thr: float = 0.4
    skip_box_thr: float = 0.0  # VinBigData winners: 0-0.001
    conf_type: str = "avg"
    needs_sizes: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_number("iou_thr", self.iou_thr, 0.0, 1.0, high_open=True)
        check_number("skip_box_thr", self.skip_box_thr, 0.0, 1.0)
        check_choice("conf_type", self.conf_type, CONF_TYPES)

    def fuse(self, group: BoxGroup) -> tuple[np.ndarray, np.ndarray]:
        if group.size is None:
            raise EnsembleInputError("weighted boxes fusion needs the image sizes")
        width, height = group.size
        scale = np.array([width, height, width, height])
        unit = np.clip(group.xyxy / scale, 0.0, 1.0)
        keep = (
            (unit[:, 2] > unit[:, 0])
            & (unit[:, 3] > unit[:, 1])
            & (group.scores >= self.skip_box_thr)
        )
        per_member = [keep & (group.members == m) for m in range(len(group.weights))]
        boxes, scores, _ = weighted_boxes_fusion(
            [unit[rows] for rows in per_member],
            [group.scores[rows] for rows in per_member],
            [np.zeros(int(rows.sum())) for rows in per_member],
            weights=list(group.weights),
            iou_thr=self.iou_thr,
            skip_box_thr=self.skip_box_thr,
            conf_type=self.conf_type,
        )
        # Some conf_types exceed 1 when one member has overlapping boxes (PITFALLS).
        return np.asarray(boxes, np.float64) * scale, np.minimum(
            np.asarray(scores, np.float64), 1.0
        )
