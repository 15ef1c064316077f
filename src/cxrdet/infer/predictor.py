"""The ensemble predictor: raw images -> competition boxes, with every fold model and the
tuned recipe. `cxrdet predict`, the evaluate stage and the MLflow model serve through it.

Per image: decode (DICOM, PNG, JPEG) and window exactly as `prepare` cached it
(cxrdet.data.images.read_image + resize_square, the cache's own settings), run every fold
classifier over its TTA views and every fold detector (each family of detector.families)
over its TTA views, then cxrdet.ensemble.apply_recipe: view fusion, fold fusion (which also
merges the families), shrink, gating, cut. Boxes come back in original pixels. With
detector_final.enabled the detectors are instead the final models of stage
train_detector_final (one per family, trained on every non-holdout image): an image has one
model per family, so there is no fold fusion (it only merges the families, if several).

A model directory holds predictor.json (the PredictorSpec: preprocessing, TTA settings,
dataset format and classes, the recipe, the model files relative to it) and the model
files; `save_bundle` writes one. A project root after `dvc repro` loads too: its spec is
read from params.yaml, the prepared cache settings and results/tuning/ensemble.json.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrdet.config import Params, TrainParams, load_params
from cxrdet.data.cache import SETTINGS_FILE, resize_square
from cxrdet.data.images import IMAGE_SUFFIXES, read_image
from cxrdet.ensemble import Ensembled, EnsembleRecipe, MemberPredictions, apply_recipe
from cxrdet.errors import CxrdetError, ImageReadError
from cxrdet.families import get_family, load_any_detector
from cxrdet.infer.detector_tta import detection_views, predict_views, prediction_tables
from cxrdet.infer.tta import predict_tta, tta_views, view_table
from cxrdet.io import write_json
from cxrdet.models.classifier import load_classifier
from cxrdet.models.retinanet import DecodeConfig
from cxrdet.paths import DETECTOR_FINAL_MODELS, ENSEMBLE, PREPARED_DETECT
from cxrdet.runtime.device import select_device

SPEC_FILE = "predictor.json"
FINAL_MARKER = "final.json"  # {"enabled": ...}: written whether or not detector_final is enabled


@dataclass(frozen=True)
class PredictorSpec:
    """Everything but the weights; paths relative to the directory it is loaded from."""

    preprocess: dict[str, float]  # the cache's settings: size, low_percentile, high_percentile
    fmt: str  # the training data's format (rsna, vinbigdata, folder): the default submission
    class_names: list[str]  # box classes
    classifier_tta: dict[str, int]  # augmentations, seed, batch_size
    detector_tta: dict[str, Any]  # hflip, scales, batch_size
    recipe: dict[str, Any]  # EnsembleRecipe.to_dict()
    classifiers: list[str]
    detectors: list[str]
    source: dict[str, Any] = field(
        default_factory=dict
    )  # where the recipe came from (ensemble.json)

    @classmethod
    def read(cls, path: Path) -> PredictorSpec:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise CxrdetError(f"{path}: not a predictor spec ({error})") from None


def project_spec(root: Path) -> PredictorSpec:
    """The spec of a project after `dvc repro` (paths relative to `root`)."""
    params = load_params(root / "params.yaml")
    prepared = root / PREPARED_DETECT
    # The cache's own settings (not params' prepare): what the models were trained on.
    files = {
        "settings": (prepared / "cache" / SETTINGS_FILE, "prepare@detect"),
        "dataset": (prepared / "dataset.json", "prepare@detect"),
        "tuned": (root / ENSEMBLE, "tune_ensemble"),
    }
    for path, stage in files.values():
        if not path.is_file():
            raise CxrdetError(f"{path}: not found; run `dvc repro {stage}` first")
    settings, dataset, tuned = (json.loads(path.read_text()) for path, _ in files.values())
    if "recipe" not in tuned:
        raise CxrdetError(f'{files["tuned"][0]}: no "recipe"; rerun `dvc repro tune_ensemble`')
    tta, classifier = params.detector.tta, params.classifier
    return PredictorSpec(
        preprocess=settings,
        fmt=dataset["format"],
        class_names=list(dataset["class_names"]),
        classifier_tta=classifier.tta.model_dump(),
        detector_tta={"hflip": tta.hflip, "scales": list(tta.scales), "batch_size": tta.batch_size},
        recipe=tuned["recipe"],
        classifiers=[
            f"models/classifier/fold{k}/{v.name}.pt"
            for k in classifier.folds
            for v in classifier.variants
        ],
        detectors=final_detectors(root, params)
        if params.detector_final.enabled
        else [
            f"models/detector/fold{k}/{get_family(family).model_file}"
            for k in params.detector.folds
            for family in params.detector.families
        ],
        source={
            key: tuned[key]
            for key in ("source", "study", "trial", "objective", "metric")
            if key in tuned
        },
    )


def final_detectors(root: Path, params: Params) -> list[str]:
    """The final model of every family of detector.families (detector_final.enabled: they replace
    the fold models); CxrdetError naming the stage when train_detector_final has not written
    them."""
    marker = root / DETECTOR_FINAL_MODELS / FINAL_MARKER
    files = [
        f"{DETECTOR_FINAL_MODELS}/{get_family(family).model_file}"
        for family in params.detector.families
    ]
    written = json.loads(marker.read_text()) if marker.is_file() else {}
    missing = [name for name in files if not (root / name).is_file()]
    if not written.get("enabled") or missing:
        raise CxrdetError(
            f"{marker}: detector_final.enabled is true but the final models "
            f"{missing or files} are not trained; run `dvc repro train_detector_final`"
        )
    return files


def load_spec(directory: Path) -> PredictorSpec:
    """A model directory's predictor.json, else the spec of the project at `directory`."""
    directory = Path(directory)
    if (directory / SPEC_FILE).is_file():
        return PredictorSpec.read(directory / SPEC_FILE)
    if (directory / "params.yaml").is_file():
        return project_spec(directory)
    raise CxrdetError(
        f"{directory}: neither a model directory ({SPEC_FILE}) nor a project (params.yaml)"
    )


def save_bundle(spec: PredictorSpec, source: Path, out_dir: Path) -> Path:
    """Copy the spec's model files from `source` into `out_dir` and write its predictor.json:
    a self-contained model directory (what an MLflow model logs as artifacts)."""
    out_dir = Path(out_dir)
    moved: dict[str, list[str]] = {"classifiers": [], "detectors": []}
    for kind, paths in (("classifiers", spec.classifiers), ("detectors", spec.detectors)):
        for relative in paths:
            # models/<family>/fold<k>/<file>: keep <family>/fold<k>/<file>, unique per fold and
            # variant
            target = Path(*Path(relative).parts[-3:])
            (out_dir / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(source) / relative, out_dir / target)
            moved[kind].append(target.as_posix())
    bundle = PredictorSpec(**{**asdict(spec), **moved})
    write_json(asdict(bundle), out_dir / SPEC_FILE)
    return out_dir


class ArrayImages:
    """CachedImages' interface over decoded arrays (the cache side), for the TTA datasets."""

    def __init__(self, image_ids: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        self.image_ids = list(image_ids)
        self.arrays = list(arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def read(self, index: int, size: int) -> np.ndarray:
        image = self.arrays[index]
        return image if image.shape == (size, size) else resize_square(image, size)


@dataclass(frozen=True)
class LoadedImages:
    images: ArrayImages  # at the cache side, as `prepare` stored them
    sizes: pd.DataFrame  # image_id, width, height: original pixels


class EnsemblePredictor:
    """Every fold model in memory, and the recipe; `predict` maps image files to boxes."""

    def __init__(self, spec: PredictorSpec, directory: Path, device: str = "auto") -> None:
        self.spec = spec
        self.device = select_device(device)
        self.runtime = TrainParams(device=self.device.type, progress=False, workers=0)
        self.recipe = EnsembleRecipe.from_dict(spec.recipe, key=f"{directory}: recipe")
        self.classifiers = [
            self._ready(*load_classifier(Path(directory) / p)) for p in spec.classifiers
        ]
        self.detectors = [
            self._ready(*load_any_detector(Path(directory) / p)) for p in spec.detectors
        ]
        if not self.detectors:
            raise CxrdetError(f"{directory}: the predictor lists no detector")
        # The sqrt rule reads P(not normal) from classifiers of the image labels (p_<label>
        # columns).
        self.class_names = {
            c["variant"]: list(c["class_names"])
            for _, c in self.classifiers
            if c.get("target") == "label"
        }

    @classmethod
    def load(cls, directory: Path, device: str = "auto") -> EnsemblePredictor:
        return cls(load_spec(directory), Path(directory), device)

    def _ready(
        self, model: torch.nn.Module, config: dict[str, Any]
    ) -> tuple[torch.nn.Module, dict[str, Any]]:
        return model.to(self.device).eval(), config

    def load_images(
        self,
        paths: Sequence[Path],
        image_ids: Sequence[str],
        rejected: list[tuple[str, Path, str]] | None = None,
    ) -> LoadedImages:
        """Decode and resize as `prepare` did. A file that cannot be read or is blank (one
        value everywhere) raises ImageReadError naming it, or with a `rejected` list is
        appended to it as (image id, path, reason) and left out."""
        settings = self.spec.preprocess
        ids, arrays, widths, heights = [], [], [], []
        for image_id, path in zip(image_ids, paths):
            try:
                image = read_image(path, settings["low_percentile"], settings["high_percentile"])
                if image.min() == image.max():  # no content: refused by name, not deep in a batch
                    raise ImageReadError(
                        path, f"blank image: every pixel is {image.flat[0]} after windowing"
                    )
            except ImageReadError as error:
                if rejected is None:
                    raise
                rejected.append((image_id, Path(path), error.reason))
                continue
            ids.append(image_id)
            heights.append(image.shape[0])
            widths.append(image.shape[1])
            arrays.append(resize_square(image, int(settings["size"])))
        sizes = pd.DataFrame({"image_id": ids, "width": widths, "height": heights})
        return LoadedImages(ArrayImages(ids, arrays), sizes)

    def predict_members(self, loaded: LoadedImages) -> MemberPredictions:
        """Every fold model's predictions over its TTA views (the stages' table contracts)."""
        ids, images = loaded.images.image_ids, loaded.images
        tta = self.spec.classifier_tta
        views = tta_views(tta["augmentations"])
        classifier = [
            view_table(
                predict_tta(
                    model,
                    images,
                    size=config["image_size"],
                    views=views,
                    seed=tta["seed"],
                    batch_size=tta["batch_size"],
                    device=self.device,
                    runtime=self.runtime,
                ),
                ids,
                config,
                [v.name for v in views],
            )
            for model, config in self.classifiers
        ]
        detection = self.spec.detector_tta
        boxes, tables = [], []
        for model, config in self.detectors:
            predicted = predict_views(
                model,
                images,
                size=config["image_size"],
                views=detection_views(detection["hflip"], detection["scales"]),
                decode_config=DecodeConfig(**config["decode"]),
                batch_size=detection["batch_size"],
                device=self.device,
                runtime=self.runtime,
            )
            found, table = prediction_tables(
                predicted,
                ids,
                loaded.sizes,
                config["image_size"],
                fold=config["fold"],
                model=config["name"],
                image_classes=config["image_class_names"],
                positive=config["positive"],
            )
            boxes.append(found)
            tables.append(table)
        return MemberPredictions(
            boxes=pd.concat(boxes, ignore_index=True),
            images=pd.concat(tables, ignore_index=True),
            classifier=pd.concat(classifier, ignore_index=True)
            if classifier
            else pd.DataFrame(columns=["image_id", "fold", "model", "view", "opacity", "probs"]),
            sizes=loaded.sizes,
        )

    def ensemble(
        self, members: MemberPredictions, recipe: EnsembleRecipe | None = None
    ) -> Ensembled:
        return apply_recipe(members, recipe or self.recipe, self.class_names)

    def predict(
        self,
        paths: Sequence[Path],
        image_ids: Sequence[str],
        chunk: int = 64,
        progress: Any = None,
        rejected: list[tuple[str, Path, str]] | None = None,
    ) -> Ensembled:
        """Final boxes and classifier probabilities of the images (see predict_chunks)."""
        done = list(self.predict_chunks(paths, image_ids, chunk, progress, rejected))
        if not done:
            raise CxrdetError(f"no images to predict ({len(rejected or [])} unreadable)")
        return Ensembled(
            pd.concat([d.boxes for d in done], ignore_index=True),
            pd.concat([d.probabilities for d in done]),
        )

    def predict_chunks(
        self,
        paths: Sequence[Path],
        image_ids: Sequence[str],
        chunk: int = 64,
        progress: Any = None,
        rejected: list[tuple[str, Path, str]] | None = None,
    ) -> Iterator[Ensembled]:
        """The images `chunk` at a time (bounded memory): one result per chunk that has a
        readable image; `progress(n)` is called as each chunk's images are done. With a
        `rejected` list, unreadable images go there instead of stopping (see load_images)."""
        for start in range(0, len(paths), chunk):
            part = slice(start, start + chunk)
            loaded = self.load_images(paths[part], image_ids[part], rejected)
            if len(loaded.images):
                yield self.ensemble(self.predict_members(loaded))
            if progress is not None:
                progress(len(paths[part]))


def find_images(directory: Path) -> Iterator[tuple[str, Path]]:
    """(image id = file stem, path) of every DICOM/PNG/JPEG under `directory`, sorted by path;
    CxrdetError when two files share a stem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CxrdetError(f"{directory}: input folder not found")
    seen: dict[str, Path] = {}
    for path in sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ):
        if path.stem in seen:
            raise CxrdetError(
                f"{path}: image id {path.stem!r} is also {seen[path.stem]}; ids are file names"
            )
        seen[path.stem] = path
        yield path.stem, path
