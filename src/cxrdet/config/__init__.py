"""Typed, validated params: params.yaml (optionally with a profile merged over it).

Every knob of every stage lives in params.yaml, grouped by stage; each group's section
is defined in this package's modules (data, training, detector, ensemble, tuning, register).
Loading validates the whole file: an unknown key, a wrong type or an out-of-range value raises
ConfigError naming the key (dotted path) and what is allowed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError, ValidationInfo, field_validator, model_validator

from cxrdet.config.data import (
    DataParams,
    DatasetFormat,
    DatasetParams,
    PrepareParams,
    SplitParams,
    SynthesizeParams,
    TrackingParams,
)
from cxrdet.config.detector import (
    AnchorParams,
    AnchorSearchParams,
    BoxAugmentParams,
    DecodeParams,
    DetectorFinalParams,
    DetectorLossParams,
    DetectorParams,
    DetectorTtaParams,
    TuneAnchorsParams,
)
from cxrdet.config.ensemble import (
    EnsembleParams,
    EnsembleSearchParams,
    FusionParams,
    GatingParams,
    ShrinkRange,
    TuneEnsembleParams,
    UnitRange,
)
from cxrdet.config.register import RegisterParams
from cxrdet.config.section import Section
from cxrdet.config.training import (
    ClassifierParams,
    ClassifierVariant,
    OptimParams,
    PretrainParams,
    ScheduleParams,
    TrainParams,
    TtaParams,
)
from cxrdet.config.tuning import CountRange, PrunerParams, SearchRange, StudyParams
from cxrdet.errors import ConfigError

__all__ = [
    "AnchorParams",
    "AnchorSearchParams",
    "BoxAugmentParams",
    "ClassifierParams",
    "ClassifierVariant",
    "CountRange",
    "DataParams",
    "DatasetFormat",
    "DatasetParams",
    "DecodeParams",
    "DetectorFinalParams",
    "DetectorLossParams",
    "DetectorParams",
    "DetectorTtaParams",
    "EnsembleParams",
    "EnsembleSearchParams",
    "FusionParams",
    "GatingParams",
    "OptimParams",
    "Params",
    "PrepareParams",
    "PretrainParams",
    "PrunerParams",
    "RegisterParams",
    "ScheduleParams",
    "SearchRange",
    "Section",
    "ShrinkRange",
    "SplitParams",
    "StudyParams",
    "SynthesizeParams",
    "TrackingParams",
    "TrainParams",
    "TtaParams",
    "TuneAnchorsParams",
    "TuneEnsembleParams",
    "UnitRange",
    "deep_merge",
    "load_params",
    "read_yaml",
    "validate_params",
]


# The field `register` (stage register's group) shadows ABCMeta.register, which pydantic's
# metaclass inherits, on the class only: instances read the field, so the warning is noise.
warnings.filterwarnings(
    "ignore", message='Field name "register" in "Params" shadows', category=UserWarning
)


class Params(Section):
    synthesize: SynthesizeParams = SynthesizeParams()
    data: DataParams
    prepare: PrepareParams = PrepareParams()
    split: SplitParams = SplitParams()
    tracking: TrackingParams = TrackingParams()
    train: TrainParams = TrainParams()
    classifier: ClassifierParams
    pretrain: PretrainParams = PretrainParams()
    detector: DetectorParams = DetectorParams()
    detector_final: DetectorFinalParams = DetectorFinalParams()
    tune_anchors: TuneAnchorsParams = TuneAnchorsParams()
    ensemble: EnsembleParams = EnsembleParams()
    tune_ensemble: TuneEnsembleParams = TuneEnsembleParams()
    register: RegisterParams = RegisterParams()

    @field_validator("classifier", "detector")
    @classmethod
    def _folds_exist(
        cls, section: ClassifierParams | DetectorParams, info: ValidationInfo
    ) -> ClassifierParams | DetectorParams:
        _check_fold(info, section.folds)
        return section

    @field_validator("tune_anchors")
    @classmethod
    def _tuning_fold_exists(
        cls, tune: TuneAnchorsParams, info: ValidationInfo
    ) -> TuneAnchorsParams:
        _check_fold(info, [tune.fold])
        return tune

    @field_validator("pretrain")
    @classmethod
    def _nih_needs_its_data(cls, pretrain: PretrainParams, info: ValidationInfo) -> PretrainParams:
        data = info.data.get("data")  # absent when `data` itself failed validation
        if pretrain.source == "nih" and data is not None and data.pretrain is None:
            raise ValueError(
                "source 'nih' trains on data.pretrain, which is missing: add data.pretrain "
                "{format: nih, raw_dir: <NIH ChestX-ray14 folder>} or set pretrain.source to "
                "file, imagenet or none"
            )
        return pretrain

    @model_validator(mode="after")
    def _weights_cover_backbones(self) -> Params:
        if self.pretrain.source == "file":
            missing = [
                name for name in self.pretrained_backbones() if name not in self.pretrain.weights
            ]
            if missing:
                raise ValueError(f"pretrain.weights has no file for the backbones {missing}")
        if self.detector.weights == "imagenet" and not self.pretrain.allow_download:
            raise ValueError(
                "detector.weights: 'imagenet' downloads timm weights: "
                "set pretrain.allow_download: true"
            )
        return self

    def pretrained_backbones(self) -> dict[str, str]:
        """{backbone: the params key naming it first} for every backbone `pretrain` provides:
        the classifiers' and, with detector.weights pretrain, the detector's."""
        keys: dict[str, str] = {}
        for number, variant in enumerate(self.classifier.variants):
            keys.setdefault(variant.backbone, f"classifier.variants.{number}.backbone")
        if self.detector.weights == "pretrain":
            keys.setdefault(self.detector.backbone, "detector.backbone")
        return keys


def _check_fold(info: ValidationInfo, folds: list[int]) -> None:
    split = info.data.get("split")
    missing = [fold for fold in folds if split and not 0 <= fold < split.folds]
    if missing:
        raise ValueError(
            f"folds {missing} do not exist: "
            f"split.folds={split.folds} makes folds 0-{split.folds - 1}"
        )


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


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; DVC refuses such a params.yaml."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        content = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
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
