"""Params of the training loop and of the classifier recipe (pretrain, fold classifiers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cxrdet.config.section import Section


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
    # imagenet: timm's ImageNet weights (a download: needs allow_download);
    # none: randomly initialised backbones (seeded by optim.seed): classifiers train from scratch.
    # Only nih reads data.pretrain; the others need no NIH data (remove data.pretrain).
    source: Literal["nih", "file", "imagenet", "none"] = "nih"
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
