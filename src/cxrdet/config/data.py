"""Params of the data stages: synthesize, prepare, split, and the tracking store."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cxrdet.config.section import Section

DatasetFormat = Literal["rsna", "vinbigdata", "nih", "folder"]


class SynthesizeParams(Section):
    """The synthetic demo data written in the real RSNA / VinBigData / NIH / folder formats."""

    seed: int = 2018
    out_dir: str = "data/raw/demo"
    image_size: int = Field(256, ge=64, le=2048)
    rsna_images: int = Field(120, ge=8)
    vinbigdata_images: int = Field(40, ge=8)
    nih_images: int = Field(160, ge=8)
    folder_images: int = Field(24, ge=4)


class DatasetParams(Section):
    """One raw dataset: its on-disk format and where it lives."""

    format: DatasetFormat
    raw_dir: str
    on_bad_rows: Literal["raise", "drop"] = "raise"
    # VinBigData only: fuse the 3 readers' boxes per class with weighted boxes fusion,
    # as the winners built their training labels.
    fuse_readers: bool = False
    fuse_iou: float = Field(0.4, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fusion_needs_readers(self) -> "DatasetParams":
        if self.fuse_readers and self.format != "vinbigdata":
            raise ValueError("fuse_readers applies to format 'vinbigdata' only")
        return self


class DataParams(Section):
    """`detect` feeds the detectors and classifiers; `pretrain` the NIH-style pretraining,
    needed only with pretrain.source nih (dvc.yaml runs prepare@<name> for each entry)."""

    detect: DatasetParams
    pretrain: DatasetParams | None = None  # absent or null: no NIH data (pretrain.source not nih)


class PrepareParams(Section):
    image_size: int = Field(256, ge=32, le=2048)  # side of the square uint8 cache
    workers: int = Field(0, ge=0)  # 0 = one per CPU core
    low_percentile: float = Field(0.5, ge=0.0, lt=50.0)
    high_percentile: float = Field(99.5, gt=50.0, le=100.0)
    max_rejected_fraction: float = Field(0.05, ge=0.0, le=1.0)
    sample_grid: int = Field(12, ge=0, le=64)  # images in the logged sample grid


class SplitParams(Section):
    seed: int = 42
    folds: int = Field(4, ge=2, le=20)
    holdout_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    max_box_count: int = Field(3, ge=1)  # stratify on min(boxes, this)
    group_by_patient: bool = True


class TrackingParams(Section):
    experiment: str = Field("cxrdet", min_length=1)
    # None: sqlite:///<absolute project root>/mlruns/mlflow.db; MLFLOW_TRACKING_URI wins.
    tracking_uri: str | None = None
