"""Typed, validated params: params.yaml (optionally with a profile merged over it).

Every knob of every stage lives in params.yaml, grouped by stage. Loading validates the
whole file: an unknown key, a wrong type or an out-of-range value raises ConfigError
naming the key (dotted path) and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cxrdet.errors import ConfigError

DatasetFormat = Literal["rsna", "vinbigdata", "nih", "folder"]


class Section(BaseModel):
    """A params group: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


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
    """`detect` feeds the detectors and classifiers; `pretrain` the NIH-style pretraining."""

    detect: DatasetParams
    pretrain: DatasetParams


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


class Params(Section):
    synthesize: SynthesizeParams = SynthesizeParams()
    data: DataParams
    prepare: PrepareParams = PrepareParams()
    split: SplitParams = SplitParams()
    tracking: TrackingParams = TrackingParams()


def load_params(path: str | Path = "params.yaml", profile: str | Path | None = None) -> Params:
    """Read, merge (profile over params) and validate; errors name the file and key."""
    path = Path(path)
    raw = read_yaml(path)
    if profile is not None:
        raw = deep_merge(raw, read_yaml(Path(profile)))
    return validate_params(raw, source=str(path))


def validate_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = "\n".join(_describe(err) for err in error.errors())
        raise ConfigError(f"{source}: invalid params\n{problems}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of stage groups at the top level")
    return content


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` wins; nested mappings merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        return f"  {key}: unknown key; allowed keys here: {', '.join(allowed)}"
    given = error.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"  {key}: {error['msg']}{shown}"


def _allowed_keys(parent: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Params
    for part in parent:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
