"""Competition metrics: the RSNA score, the VinBigData mAP, classification metrics."""

from cxrdet.metrics.classification import (
    BinaryMetrics,
    MulticlassMetrics,
    binary_metrics,
    multiclass_metrics,
)
from cxrdet.metrics.iou import iou_xywh, iou_xyxy, xywh_to_xyxy
from cxrdet.metrics.rsna import RSNA_THRESHOLDS, RsnaResult, rsna_score
from cxrdet.metrics.vinbigdata import (
    NO_FINDING,
    MapResult,
    mean_average_precision,
    vinbigdata_score,
    voc_ap,
    with_no_finding_boxes,
)

__all__ = [
    "NO_FINDING",
    "RSNA_THRESHOLDS",
    "BinaryMetrics",
    "MulticlassMetrics",
    "MapResult",
    "RsnaResult",
    "binary_metrics",
    "iou_xywh",
    "iou_xyxy",
    "mean_average_precision",
    "multiclass_metrics",
    "rsna_score",
    "vinbigdata_score",
    "voc_ap",
    "with_no_finding_boxes",
    "xywh_to_xyxy",
]
