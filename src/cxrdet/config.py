"""Typed, validated params: params.yaml (optionally with a profile merged over it).

Every knob of every stage lives in params.yaml, grouped by stage. Loading validates the
whole file: an unknown key, a wrong type or an out-of-range value raises ConfigError
naming the key (dotted path) and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

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


class TrainParams(Section):
    """How every training stage runs (device, precision, loading); what each model learns
    and for how long is in its own group (`pretrain.optim`, `classifier.optim`, ...)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else CPU
    amp: bool = True  # mixed precision on GPU (bf16 where supported, else fp16); CPU runs fp32
    channels_last: bool = True  # NHWC tensors: faster convolutions on GPU tensor cores
    deterministic: bool = True  # deterministic kernels: bit-identical reruns and resumes on CPU
    threads: int = Field(0, ge=0)  # torch CPU threads per process; 0 = cores / processes
    workers: int = Field(0, ge=0)  # DataLoader worker processes; 0 = load in the training process
    progress: bool = True  # tqdm bars


class ScheduleParams(Section):
    """Learning-rate schedule, stepped once per epoch."""

    name: Literal["constant", "cosine", "step", "plateau"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)  # linear warm-up (constant, cosine, step)
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)  # cosine: final lr = lr x this
    step_epochs: int = Field(10, ge=1)  # step: multiply by gamma every this many epochs
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step and plateau: the lr factor
    plateau_patience: int = Field(2, ge=0)  # plateau: epochs without improvement before a cut

    @model_validator(mode="after")
    def _no_warmup_on_plateau(self) -> "ScheduleParams":
        if self.name == "plateau" and self.warmup_epochs:
            raise ValueError("warmup_epochs applies to constant, cosine and step schedules only")
        return self


class OptimParams(Section):
    """One model's optimisation: epochs, batch, optimizer, schedule, clipping, early stopping."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)  # global batch: split across DDP processes
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: ScheduleParams = ScheduleParams()
    clip_grad_norm: float = Field(0.0, ge=0.0)  # max gradient norm; 0 = no clipping
    patience: int = Field(0, ge=0)  # early stop after this many epochs without improvement; 0 = off
    seed: int = 0


class PretrainParams(Section):
    """Where the classifiers' backbones start from: one set of weights per backbone that
    `classifier.variants` uses, written to models/pretrained/<backbone>.pt."""

    # nih: train on data.pretrain (NIH format, 14 findings + abnormal = 15 sigmoid outputs);
    # file: import `weights` (files you `dvc add`ed under models/imported/);
    # imagenet: timm's ImageNet weights (a download: needs allow_download).
    source: Literal["nih", "file", "imagenet"] = "nih"
    imagenet_init: bool = False  # source nih: start NIH training from ImageNet weights (a download)
    allow_download: bool = False  # nothing is ever downloaded unless this is true
    weights: dict[str, str] = {}  # source file: {timm backbone name: path}
    image_size: int = Field(128, ge=32, le=2048)
    val_fraction: float = Field(0.2, gt=0.0, lt=0.5)  # patients held out to validate pretraining
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)  # dropout before the 15-output head
    optim: OptimParams = OptimParams()

    @model_validator(mode="after")
    def _sources_are_complete(self) -> "PretrainParams":
        downloads = self.source == "imagenet" or (self.source == "nih" and self.imagenet_init)
        if downloads and not self.allow_download:
            what = "source 'imagenet'" if self.source == "imagenet" else "imagenet_init"
            raise ValueError(f"{what} downloads timm weights: set pretrain.allow_download: true")
        if self.source == "file" and not self.weights:
            raise ValueError("source 'file' needs pretrain.weights: {timm backbone name: file}")
        return self


class ClassifierVariant(Section):
    """One fold classifier: a timm backbone at an input size with a target."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # names its model file and prediction rows
    backbone: str = Field(min_length=1)  # any timm model name, built with one input channel
    image_size: int = Field(128, ge=32, le=2048)
    # opacity: 2 classes, image has opacity boxes or not;
    # label: one class per image label (RSNA: Normal / No Lung Opacity - Not Normal / Lung Opacity).
    target: Literal["opacity", "label"] = "opacity"


class TtaParams(Section):
    """Classifier test-time augmentation: {original, inverted, flipped} x (1 + augmentations)."""

    augmentations: int = Field(4, ge=0)  # random views per base view; 4 -> 15 views (1st place)
    seed: int = 0
    batch_size: int = Field(16, ge=1)  # images per forward pass (each brings all its views)


class ClassifierParams(Section):
    """Fold classifiers (DVC stage train_classifier@<fold>) and their TTA predictions."""

    folds: list[int] = Field([0, 1, 2, 3], min_length=1)  # folds of `split` that train a model
    variants: list[ClassifierVariant] = Field(min_length=1)
    class_weighted: bool = True  # cross-entropy weighted by inverse class frequency (1st place)
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)  # dropout before the head
    optim: OptimParams = OptimParams()
    tta: TtaParams = TtaParams()

    @model_validator(mode="after")
    def _unique(self) -> "ClassifierParams":
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique (got {names})")
        if len(set(self.folds)) != len(self.folds):
            raise ValueError(f"folds must be unique (got {self.folds})")
        return self

    def backbones(self) -> list[str]:
        """The distinct backbones of the variants, each of which `pretrain` provides."""
        return sorted({variant.backbone for variant in self.variants})


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
    train: TrainParams = TrainParams()
    # classifier before pretrain: pretrain's check reads the variants' backbones.
    classifier: ClassifierParams
    pretrain: PretrainParams = PretrainParams()

    @field_validator("classifier")
    @classmethod
    def _folds_exist(cls, classifier: ClassifierParams, info: ValidationInfo) -> ClassifierParams:
        split = info.data.get("split")
        missing = [fold for fold in classifier.folds if split and not 0 <= fold < split.folds]
        if missing:
            raise ValueError(
                f"folds {missing} do not exist: "
                f"split.folds={split.folds} makes folds 0-{split.folds - 1}"
            )
        return classifier

    @field_validator("pretrain")
    @classmethod
    def _weights_cover_backbones(
        cls, pretrain: PretrainParams, info: ValidationInfo
    ) -> PretrainParams:
        classifier = info.data.get("classifier")
        if pretrain.source == "file" and classifier is not None:
            missing = [name for name in classifier.backbones() if name not in pretrain.weights]
            if missing:
                raise ValueError(f"weights has no file for the classifier backbones {missing}")
        return pretrain


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
        if isinstance(part, int):  # an item of a list of sections, e.g. classifier.variants.0
            continue
        annotation = model.model_fields[str(part)].annotation
        if get_origin(annotation) is list:
            (annotation,) = get_args(annotation)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
