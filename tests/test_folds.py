import numpy as np
import pandas as pd
import pytest

from cxrdet.data.folds import HOLDOUT, make_folds, split_stats

LABELS = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]


def cohort(n_patients: int = 150, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patients with 1-3 images each; opacity images carry 1-3 boxes."""
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for patient in range(n_patients):
        label = LABELS[rng.choice(3, p=[0.35, 0.4, 0.25])]
        for visit in range(rng.integers(1, 4)):
            image_id = f"p{patient}_v{visit}"
            images.append({"image_id": image_id, "patient_id": f"p{patient}", "label": label})
            if label == "Lung Opacity":
                for _ in range(rng.integers(1, 4)):
                    boxes.append({"image_id": image_id, "x": 1.0, "y": 1.0, "w": 5.0, "h": 5.0})
    return pd.DataFrame(images), pd.DataFrame(boxes)


def split(images, boxes, **overrides):
    settings = {"folds": 4, "holdout_fraction": 0.15, "seed": 3} | overrides
    return make_folds(images, boxes, **settings)


def test_every_image_gets_one_fold_or_the_holdout():
    images, boxes = cohort()
    result = split(images, boxes)
    assert list(result["image_id"]) == list(images["image_id"])
    assert set(result["fold"]) == {HOLDOUT, 0, 1, 2, 3}


def test_no_patient_in_two_folds_or_in_folds_and_holdout():
    images, boxes = cohort()
    result = split(images, boxes)
    assert (result.groupby("patient_id")["fold"].nunique() == 1).all()


def test_holdout_size_and_class_balance_per_fold():
    images, boxes = cohort(n_patients=300)
    result = split(images, boxes).merge(images[["image_id", "label"]], on="image_id")
    holdout_share = (result["fold"] == HOLDOUT).mean()
    assert 0.09 < holdout_share < 0.21  # one part of round(1/0.15) = 7: ~14%
    overall = result["label"].value_counts(normalize=True)
    for _, part in result.groupby("fold"):
        share = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (share - overall).abs().max() < 0.08


def test_box_count_is_stratified_too():
    images, boxes = cohort(n_patients=300)
    result = split(images, boxes)
    counts = boxes.groupby("image_id").size().reindex(images["image_id"], fill_value=0).to_numpy()
    result["multi"] = counts >= 2
    overall = result["multi"].mean()
    for _, part in result[result["fold"] != HOLDOUT].groupby("fold"):
        assert abs(part["multi"].mean() - overall) < 0.08


def test_same_seed_same_split_other_seed_other_split():
    images, boxes = cohort()
    first, again, other = split(images, boxes), split(images, boxes), split(images, boxes, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first["fold"].equals(other["fold"])


def test_without_patient_grouping_images_are_the_groups():
    images, boxes = cohort()
    result = split(images, boxes, group_by_patient=False)
    assert (result.groupby("patient_id")["fold"].nunique() > 1).any()


def test_rare_strata_fall_back_instead_of_failing():
    images, boxes = cohort(n_patients=60)
    images.loc[0, "label"] = "Very rare"
    result = split(images, boxes)
    assert result.loc[0, "stratum"] != "Very rare|boxes=0"


def test_too_few_images_is_a_clear_error():
    images, boxes = cohort(n_patients=3)
    with pytest.raises(ValueError, match="too few"):
        split(images, boxes)


def test_split_stats_reports_every_part():
    images, boxes = cohort()
    stats = split_stats(split(images, boxes), images)
    assert set(stats) == {"holdout", "fold0", "fold1", "fold2", "fold3"}
    assert sum(part["n_images"] for part in stats.values()) == len(images)
