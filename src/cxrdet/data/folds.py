"""Stratified, patient-grouped k-fold split plus a holdout no training or tuning sees.

Strata are image class x min(box count, max_box_count); a stratum too small to appear
in every fold falls back to the image class alone, then to one shared stratum.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

HOLDOUT = -1  # the `fold` value of holdout images


def fold_ids(split: pd.DataFrame, fold: int) -> list[str]:
    """The image ids of `fold` of a split table (HOLDOUT: the holdout's), in split order."""
    return split.loc[split["fold"] == fold, "image_id"].tolist()


def training_ids(split: pd.DataFrame, fold: int | None) -> list[str]:
    """The image ids of every fold but `fold` and the holdout (None: of every fold), in split
    order."""
    return split.loc[(split["fold"] != fold) & (split["fold"] != HOLDOUT), "image_id"].tolist()


def strata(
    images: pd.DataFrame, boxes: pd.DataFrame, max_box_count: int, n_splits: int
) -> pd.Series:
    counts = boxes.groupby("image_id").size().reindex(images["image_id"], fill_value=0)
    box_bin = np.minimum(counts.to_numpy(), max_box_count)
    fine = images["label"].astype(str).to_numpy() + "|boxes=" + box_bin.astype(str)
    coarse = images["label"].astype(str).to_numpy()
    key = pd.Series(fine, index=images.index)
    for fallback in (pd.Series(coarse, index=images.index), pd.Series("all", index=images.index)):
        sizes = key.map(key.value_counts())
        key = key.where(sizes >= n_splits, fallback)
    return key


def _one_split(
    labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int
) -> list[np.ndarray]:
    """Test indices of each of the n_splits folds."""
    # Imported here: only `split` splits; every other stage reads folds and would pay ~0.5 s
    # of sklearn (and scipy) start-up for nothing.
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # sklearn warns when a stratum has fewer members than folds; strata() already
        # merged those, and patient grouping can still make a few uneven.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def make_folds(
    images: pd.DataFrame,
    boxes: pd.DataFrame,
    *,
    folds: int,
    holdout_fraction: float,
    seed: int,
    max_box_count: int = 3,
    group_by_patient: bool = True,
) -> pd.DataFrame:
    """image_id, patient_id, stratum, fold (0..folds-1, or HOLDOUT). Deterministic in `seed`.

    The holdout is one part of a grouped stratified split into round(1/holdout_fraction)
    parts, so its size is close to, not exactly, holdout_fraction.
    """
    holdout_parts = max(2, round(1 / holdout_fraction))
    needed = max(folds, holdout_parts)
    if len(images) < 2 * needed:
        raise ValueError(f"{len(images)} images are too few for {folds} folds and a holdout")
    groups = (
        (images["patient_id"] if group_by_patient else images["image_id"]).astype(str).to_numpy()
    )
    labels = strata(images, boxes, max_box_count, needed).to_numpy()

    fold = np.full(len(images), HOLDOUT, dtype=np.int64)
    holdout = _one_split(labels, groups, holdout_parts, seed)[0]
    rest = np.setdiff1d(np.arange(len(images)), holdout)
    for index, test in enumerate(_one_split(labels[rest], groups[rest], folds, seed + 1)):
        fold[rest[test]] = index
    return pd.DataFrame(
        {
            "image_id": images["image_id"].to_numpy(),
            "patient_id": images["patient_id"].to_numpy(),
            "stratum": labels,
            "fold": fold,
        }
    )


def split_stats(split: pd.DataFrame, images: pd.DataFrame) -> dict:
    """Per-fold image counts and label fractions (holdout reported as 'holdout')."""
    joined = split.merge(images[["image_id", "label"]], on="image_id")
    joined["part"] = joined["fold"].map(lambda f: "holdout" if f == HOLDOUT else f"fold{f}")
    stats = {}
    for part, rows in joined.groupby("part"):
        fractions = rows["label"].value_counts(normalize=True).sort_index()
        stats[part] = {
            "n_images": int(len(rows)),
            "n_patients": int(rows["patient_id"].nunique()),
            "label_fraction": {str(k): round(float(v), 4) for k, v in fractions.items()},
        }
    return stats
