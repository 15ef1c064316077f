"""Chunk checkpoints: a long `cxrdet predict` that is killed keeps the chunks it finished.

The images are predicted `every` at a time, in file order. A finished chunk is stored in a
folder beside the output as <index>.parquet (its final boxes, when an image of it was
readable) and then <index>.json (its rejected images): the json is the chunk's commit mark,
a chunk without one is predicted again. manifest.json, written before any chunk, holds the
run's identity: a digest of the model (its settings and weights), a digest of the input list
(every file's path, size and modification time), the chunk sizes and the device. A rerun
with the same identity skips the stored chunks; a folder of any other identity is refused
naming what differs: its chunks came from another model or other files and must never be
mixed in, and deleting them unasked could throw away work the user still means to resume.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cxrdet.errors import CxrdetError, ImageReadError
from cxrdet.infer.predictor import EnsemblePredictor
from cxrdet.io import write_json, write_parquet

MANIFEST = "manifest.json"
Rejected = tuple[str, Path, str]  # image id, file, reason


def model_digest(predictor: EnsemblePredictor) -> str:
    """What the predictions depend on: the spec (preprocessing, TTA, recipe, classes) and
    every model's config and weights; not where the files were (an MLflow model is unpacked
    into a fresh temporary folder each time it is loaded)."""
    spec = {
        k: v
        for k, v in asdict(predictor.spec).items()
        if k not in ("classifiers", "detectors", "source")
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for model, config in predictor.classifiers + predictor.detectors:
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, tensor in model.state_dict().items():
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            # as raw bytes: numpy has no bfloat16
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def inputs_digest(image_ids: Sequence[str], paths: Sequence[Path]) -> str:
    """The input list, with each file's size and modification time: a file replaced since
    a chunk was stored makes that chunk stale."""
    lines = []
    for image_id, path in zip(image_ids, paths):
        stat = Path(path).stat()
        lines.append(f"{image_id}\t{Path(path).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def identity(
    predictor: EnsemblePredictor,
    image_ids: Sequence[str],
    paths: Sequence[Path],
    every: int,
    chunk: int,
) -> dict[str, Any]:
    """What a stored chunk must share with the run that resumes it, so that a resumed run
    writes what an uninterrupted one would. The device and the memory chunk too: the batch
    shape moves scores by float noise, enough to reorder near-equal boxes. Not the
    submission format: chunks hold boxes, formatted at the end. Not --on-bad-files: a chunk
    keeps its rejected images, and without a rejected list the first of them stops the run
    as predicting the chunk again would (predict_checkpointed)."""
    return {
        "model": model_digest(predictor),
        "input": inputs_digest(image_ids, paths),
        "checkpoint_every": every,
        "chunk": chunk,
        "device": predictor.device.type,
    }


class Checkpoints:
    """The stored chunks of one prediction, in `directory`."""

    def __init__(self, directory: Path, identity: dict[str, Any]) -> None:
        """Resume `directory` if it was started under `identity`; CxrdetError naming it and
        what differs if it was not. A folder without a manifest holds no chunk (the
        manifest is written first), so it is reused."""
        self.directory = Path(directory)
        manifest = self.directory / MANIFEST
        if not manifest.is_file():
            write_json(identity, manifest)
            return
        try:
            stored = dict(json.loads(manifest.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise CxrdetError(f"{manifest}: not a chunk manifest ({error})") from None
        differs = sorted(
            k for k in identity.keys() | stored.keys() if stored.get(k) != identity.get(k)
        )
        if differs:
            raise CxrdetError(
                f"{self.directory}: chunks of another prediction "
                f"(differing: {', '.join(differs)}); "
                "rerun with the model, input and options it was started with, or remove the "
                "folder to start over"
            )

    def _files(self, index: int) -> tuple[Path, Path]:
        return self.directory / f"{index:05d}.parquet", self.directory / f"{index:05d}.json"

    def done(self) -> int:
        """How many chunks are stored."""
        return sum(1 for _ in self.directory.glob("[0-9]*.json"))

    def stored(self, index: int) -> tuple[pd.DataFrame | None, list[Rejected]] | None:
        """(boxes or None, rejected images) of chunk `index`; None when it is not stored."""
        boxes, mark = self._files(index)
        if not mark.is_file():
            return None
        rejected = [
            (image_id, Path(path), reason)
            for image_id, path, reason in json.loads(mark.read_text())
        ]
        return (pd.read_parquet(boxes) if boxes.is_file() else None), rejected

    def store(self, index: int, boxes: pd.DataFrame | None, rejected: list[Rejected]) -> None:
        path, mark = self._files(index)
        if boxes is None:
            path.unlink(missing_ok=True)  # a killed earlier attempt's, of other files
        else:
            write_parquet(boxes, path)
        write_json([[image_id, str(file), reason] for image_id, file, reason in rejected], mark)

    def remove(self) -> None:
        shutil.rmtree(self.directory)


def predict_checkpointed(
    predictor: EnsemblePredictor,
    paths: Sequence[Path],
    image_ids: Sequence[str],
    checkpoints: Checkpoints,
    every: int,
    chunk: int,
    progress: Callable[[int], Any],
    rejected: list[Rejected] | None = None,
) -> pd.DataFrame:
    """The final boxes of the images, each chunk of `every` read from `checkpoints` when it
    is stored there, else predicted (`chunk` at a time, see EnsemblePredictor.predict_chunks)
    and stored. `rejected` as in predict_chunks; without it, a stored chunk's rejected image
    raises ImageReadError as predicting it would have."""
    found = []
    for index, start in enumerate(range(0, len(paths), every)):
        part = slice(start, start + every)
        stored = checkpoints.stored(index)
        if stored is None:
            refused: list[Rejected] | None = None if rejected is None else []
            done = [
                e.boxes
                for e in predictor.predict_chunks(
                    paths[part], image_ids[part], chunk, progress, refused
                )
            ]
            stored = (pd.concat(done, ignore_index=True) if done else None), refused or []
            checkpoints.store(index, *stored)
        else:
            progress(len(paths[part]))
        boxes, refused = stored
        if refused and rejected is None:
            raise ImageReadError(refused[0][1], refused[0][2])
        if rejected is not None:
            rejected.extend(refused)
        if boxes is not None:
            found.append(boxes)
    if not found:
        raise CxrdetError(f"no images to predict ({len(rejected or [])} unreadable)")
    return pd.concat(found, ignore_index=True)
