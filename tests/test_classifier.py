"""Classifier pieces: targets, class weights, task scores, params validation, prediction tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrdet.config import validate_params
from cxrdet.data.augment import apply_seeded, classifier_augmentation
from cxrdet.data.datasets import CachedImages, ClassificationDataset, read_prepared
from cxrdet.errors import ConfigError
from cxrdet.train.classifier import classification_targets, patient_split
from cxrdet.train.predictions import opacity_truth, summarize
from cxrdet.train.tasks import MultiLabelTask, SingleLabelTask, balanced_class_weights

pytest_plugins = ["prepared_demo"]


def demo_params(project_root) -> dict:
    return yaml.safe_load((project_root / "params.yaml").read_text())


def test_opacity_and_label_targets_agree_on_what_is_opacity(prepared_root):
    prepared = read_prepared(prepared_root / "data/prepared/detect")
    opacity = classification_targets(prepared, "opacity", "k")
    label = classification_targets(prepared, "label", "k")
    assert opacity.class_names == ["no_opacity", "opacity"] and opacity.positive == [1]
    assert label.class_names == ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
    assert label.positive == [2]
    assert (opacity.labels == 1).equals(label.labels == 2)


def test_label_target_needs_several_labels(prepared_root):
    prepared = read_prepared(prepared_root / "data/prepared/detect")
    one_label = prepared.__class__(
        **{**prepared.__dict__, "info": {**prepared.info, "image_labels": ["x"]}}
    )
    with pytest.raises(
        ConfigError, match=r"classifier\.variants\.1\.target: target 'label' needs 2"
    ):
        classification_targets(one_label, "label", "classifier.variants.1.target")


def test_pretraining_validation_holds_out_whole_patients(prepared_root):
    images = read_prepared(prepared_root / "data/prepared/pretrain").images
    train, val = patient_split(images, 0.25, seed=0)
    assert len(train) + len(val) == len(images) and len(val) > 0
    assert not set(images["patient_id"].iloc[train]) & set(images["patient_id"].iloc[val])


def test_class_weights_balance_the_classes():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert torch.allclose(weights, torch.tensor([4 / 6, 2.0]))


def test_augmentation_is_a_function_of_the_seed(prepared_root):
    prepared = read_prepared(prepared_root / "data/prepared/detect")
    image = CachedImages(prepared, prepared.images["image_id"][:1]).read(0, 64)
    augment = classifier_augmentation()
    outputs = [apply_seeded(augment, image, seed) for seed in range(16)]
    assert np.array_equal(outputs[3], apply_seeded(augment, image, 3))
    inverted = [
        o for o in outputs if o.mean() > 128
    ]  # inversion (p 0.5) brightens a dark-lung X-ray
    assert 0 < len(inverted) < 16


def test_dataset_items_are_normalised_and_indexed(prepared_root):
    prepared = read_prepared(prepared_root / "data/prepared/detect")
    ids = prepared.images["image_id"][:3]
    dataset = ClassificationDataset(CachedImages(prepared, ids), np.array([0, 1, 2]), 32)
    item = dataset[2]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["index"] == 2 and int(item["target"]) == 2


def batch(probs: list[list[float]], target: list, index: list[int]) -> dict:
    return {
        "probs": torch.tensor(probs),
        "target": torch.tensor(target),
        "index": torch.tensor(index),
    }


def test_single_label_scores_sum_the_opacity_classes_and_reorder_shards():
    task = SingleLabelTask(positive=[2])
    # Two DDP shards interleave dataset order; scores must not depend on it.
    outputs = [
        batch([[0.1, 0.1, 0.8], [0.7, 0.2, 0.1]], [2, 0], [0, 2]),
        batch([[0.2, 0.7, 0.1]], [1], [1]),
    ]
    scores = task.score(outputs)
    assert scores["auc"] == 1.0 and scores["accuracy"] == 1.0 and scores["loss"] > 0


def test_multi_label_scores_each_label_and_their_mean():
    task = MultiLabelTask(["a", "b"])
    outputs = [batch([[0.9, 0.2], [0.1, 0.3], [0.8, 0.6]], [[1, 0], [0, 0], [1, 1]], [0, 1, 2])]
    scores = task.score(outputs)
    assert scores["auc.a"] == 1.0 and scores["auc.b"] == 1.0 and scores["mean_auc"] == 1.0


def test_summary_averages_views_and_models_per_image():
    truth = pd.Series([1, 0], index=["p", "n"])
    rows = [
        ("p", "m1", "original", 0.9),
        ("p", "m1", "flipped", 0.1),
        ("n", "m1", "original", 0.4),
        ("n", "m1", "flipped", 0.7),
        ("p", "m2", "original", 0.3),
        ("n", "m2", "original", 0.6),
    ]
    table = pd.DataFrame(rows, columns=["image_id", "model", "view", "opacity"]).assign(fold=0)
    summary = summarize({"oof": table}, truth)
    assert summary["views"] == 2 and summary["n_oof_images"] == 2
    assert summary["oof_auc"] == 0.0 and summary["oof_auc_original"] == 1.0
    assert summary["models"]["m1"] == {"oof_auc": 0.0, "oof_auc_original": 1.0}
    assert summary["oof_auc_by_fold"] == {"0": 0.0}
    assert opacity_truth(
        pd.DataFrame({"image_id": ["a", "b"]}), pd.DataFrame({"image_id": ["b"]})
    ).to_dict() == {"a": 0, "b": 1}


def test_classifier_folds_must_exist_in_the_split(project_root):
    raw = demo_params(project_root)
    raw["split"]["folds"] = 4
    raw["classifier"]["folds"] = [0, 4]
    with pytest.raises(
        ConfigError, match=r"classifier: .*folds \[4\] do not exist: split.folds=4 makes folds 0-3"
    ):
        validate_params(raw)


def test_variant_names_are_unique_and_keys_are_checked(project_root):
    raw = demo_params(project_root)
    raw["classifier"]["variants"].append(dict(raw["classifier"]["variants"][0]))
    with pytest.raises(ConfigError, match="variant names must be unique"):
        validate_params(raw)
    raw = demo_params(project_root)
    raw["classifier"]["variants"][0]["size"] = 256
    with pytest.raises(
        ConfigError,
        match=r"classifier\.variants\.0\.size: unknown key; "
        r"allowed keys here: name, backbone, image_size, target",
    ):
        validate_params(raw)


def test_downloads_need_permission_and_imports_need_a_file_per_backbone(project_root):
    raw = demo_params(project_root)
    raw["pretrain"]["source"] = "imagenet"
    with pytest.raises(ConfigError, match=r"pretrain: .*set pretrain.allow_download: true"):
        validate_params(raw)
    raw["pretrain"] |= {"source": "file", "weights": {"other": "models/imported/x.pt"}}
    with pytest.raises(
        ConfigError,
        match=r"pretrain\.weights has no file for the backbones \['test_resnet'\]",
    ):
        validate_params(raw)


def test_missing_pretrained_backbone_names_the_variant_param(prepared_root, project_root, tmp_path):
    from cxrdet.config import load_params
    from cxrdet.runtime.distributed import DistContext
    from cxrdet.runtime.session import Runtime
    from cxrdet.train.classifier import train_fold_classifier

    params = load_params(project_root / "params.yaml")
    runtime = Runtime(params.train, torch.device("cpu"), DistContext())
    prepared = read_prepared(prepared_root / "data/prepared/detect")
    split = pd.read_parquet(prepared_root / "data/split/folds.parquet")
    with pytest.raises(
        ConfigError,
        match=r"classifier\.variants\.0\.backbone: pretrained weights .*absent\.pt "
        r".*`pretrain` stage",
    ):
        train_fold_classifier(
            params.classifier.variants[0],
            "classifier.variants.0",
            0,
            prepared,
            split,
            params.classifier,
            tmp_path / "absent.pt",
            runtime,
            tmp_path / "ck",
        )
