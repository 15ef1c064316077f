"""Detector families, one record each (as timm's `register_model` / torchvision's
`get_model`): how a family builds, trains (its fit Task), saves and loads, its model file
and its params' settings (name, optimisation, decode). Both families' predictions share one
table contract (cxrdet.infer.detector_tta), told apart by their `model` column, so the
ensemble fuses them like any two members.

A family is a module of this package that defines `FAMILY`, a `DetectorFamily` whose key is
an entry of params' detector.families. Nothing else in the project names a family: a third
one is one new module here plus its params (cxrdet.config.detector and params.yaml).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cxrdet.config import DetectorParams, OptimParams
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.families.task import DetectionTask
from cxrdet.models.files import model_file_kind
from cxrdet.models.retinanet import DecodeConfig


@dataclass(frozen=True)
class FamilySettings:
    """A family's knobs in params, wherever its section keeps them."""

    family: str  # the family's key
    # the `model` column of its predictions (params' detector.name, detector.two_stage.name)
    name: str
    optim: OptimParams
    decode: DecodeConfig
    positives_only: bool  # train on images with boxes only
    model_file: str  # in models/detector/fold<k>/


# (params, box classes, image classes, tuned anchors (anchors.json content) or None, their file
# name for errors, create_backbone's weight arguments) -> an untrained model
Builder = Callable[
    [DetectorParams, int, int, "dict[str, Any] | None", str, "dict[str, Any] | None"], nn.Module
]
# (model, params, settings, train with the global head, the training boxes' (n, 2) sizes in
# input pixels, computed on demand) -> the Task `fit` trains it with
TaskFactory = Callable[
    [nn.Module, DetectorParams, FamilySettings, bool, Callable[[], np.ndarray]], DetectionTask
]


@dataclass(frozen=True)
class DetectorFamily:
    key: str  # params' detector.families entry
    kind: str  # the `kind` of its model files (cxrdet.models.files)
    model_file: str  # its file name in models/detector/fold<k>/ and models/detector/final/
    model_class: type[nn.Module]
    global_head: bool  # predicts image classes: the p_<name>/opacity columns of its image table
    settings: Callable[[DetectorParams], FamilySettings]
    build: Builder
    task: TaskFactory
    identity: Callable[
        [DetectorParams, FamilySettings], dict[str, Any]
    ]  # params a checkpoint must match
    save: Callable[[Path, Any, dict[str, Any]], None]
    load: Callable[[Path], tuple[Any, dict[str, Any]]]


@functools.cache
def registered() -> dict[str, DetectorFamily]:
    """Every family module of this package, by key (imported on first use: they import this)."""
    found: dict[str, DetectorFamily] = {}
    for info in pkgutil.iter_modules(__path__):
        record = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if isinstance(record, DetectorFamily):
            found[record.key] = record
    return found


def get_family(key: str) -> DetectorFamily:
    families = registered()
    if key not in families:
        raise ConfigError(f"detector.families: no detector family {key!r} ({sorted(families)})")
    return families[key]


def family_of(model: nn.Module) -> DetectorFamily:
    """The family whose model class `model` is."""
    for record in registered().values():
        if isinstance(model, record.model_class):
            return record
    raise CxrdetError(
        f"{type(model).__name__}: not a model of a detector family ({sorted(registered())})"
    )


def family_settings(params: DetectorParams, key: str) -> FamilySettings:
    return get_family(key).settings(params)


def load_any_detector(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model, config) of a model file of any family."""
    kind = model_file_kind(path)
    loaders = {record.kind: record.load for record in registered().values()}
    if kind not in loaders:
        raise CxrdetError(f"{path}: a {kind!r} file, not a detector ({sorted(loaders)})")
    return loaders[kind](path)
