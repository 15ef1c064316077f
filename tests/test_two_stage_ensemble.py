"""Both detector families through one contract: the two-stage detector's TTA tables, the
predictor loading each family's file, the ensemble fusing them, and the ablation rows
(each family alone, both fused by each method)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrdet.config import TrainParams, validate_params
from cxrdet.ensemble import FUSERS, EnsembleRecipe, Gating
from cxrdet.evaluation import Holdout, ablations, only_models
from cxrdet.families import family_settings
from cxrdet.infer.detector_tta import BOX_COLUMNS, detection_views, predict_views, prediction_tables
from cxrdet.infer.predictor import ArrayImages, EnsemblePredictor, PredictorSpec
from cxrdet.models.retinanet import build_retinanet, decode_config, save_detector
from cxrdet.models.two_stage import build_two_stage, save_two_stage

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128
RECIPE = EnsembleRecipe(gating=Gating("none", {}), score_threshold=0.0, shrink=1.0)


@pytest.fixture(scope="module")
def detector_params():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["detector"] |= {
        "backbone": "test_resnet",
        "weights": "none",
        "image_size": SIZE,
        "p2": False,
        "fpn_channels": 16,
        "head_convs": 1,
        "families": ["retinanet", "two_stage"],
        "decode": {"score_floor": 0.0, "nms_iou": 0.5, "top_k": 5, "candidates": 100},
    }
    raw["detector"]["two_stage"] = {
        "deformable": [5],
        "representation": 32,
        "anchors": {"base_size": 2.0, "scales": [1.0], "ratios": [1.0]},
        "rpn_batch_size": 32,
        "roi_batch_size": 32,
        "proposals": 50,
        "decode": {"score_floor": 0.0, "nms_iou": 0.3, "top_k": 5},
    }
    return validate_params(raw).detector


def images(count: int = 4, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for k in range(count):
        image = rng.integers(20, 60, (SIZE, SIZE), dtype=np.uint8)
        image[30 + 5 * k : 60 + 5 * k, 40:70] = 220
        arrays.append(image)
    return arrays


def test_two_stage_tables_follow_the_contract(detector_params):
    model = build_two_stage(detector_params, num_classes=1).eval()
    ids = [f"img{k}" for k in range(4)]
    sizes = pd.DataFrame({"image_id": ids, "width": 512, "height": 512})
    views = detection_views(True, [1.0, 1.2])
    settings = family_settings(detector_params, "two_stage")
    predicted = predict_views(
        model,
        ArrayImages(ids, images()),
        size=SIZE,
        views=views,
        decode_config=settings.decode,
        batch_size=2,
        device=torch.device("cpu"),
        runtime=TrainParams(device="cpu", progress=False, channels_last=False),
    )
    boxes, table = prediction_tables(predicted, ids, sizes, SIZE, fold=0, model=settings.name)
    assert (
        list(boxes.columns) == BOX_COLUMNS and set(boxes["model"]) == {"two_stage"} and len(boxes)
    )
    assert boxes.groupby(["image_id", "view"]).size().max() <= 5  # two_stage.decode.top_k
    assert (boxes[["x", "y"]] >= 0).all().all() and (boxes["x"] + boxes["w"] <= 512 + 1e-6).all()
    assert (
        len(table) == 4 * len(views) and not table.filter(like="p_").columns.size
    )  # no global head


def test_predictor_fuses_both_families_and_ablation_has_their_rows(detector_params, tmp_path):
    retinanet = build_retinanet(detector_params, num_classes=1, image_classes=3).eval()
    two_stage = build_two_stage(detector_params, num_classes=1).eval()
    common = {"image_size": SIZE, "class_names": ["Lung Opacity"]}
    for fold in (0, 1):
        save_detector(
            tmp_path / f"detector/fold{fold}/model.pt",
            retinanet,
            {
                **common,
                "fold": fold,
                "name": "retinanet",
                "decode": decode_config(detector_params).__dict__,
                "image_class_names": ["a", "b", "c"],
                "positive": [2],
            },
        )
        save_two_stage(
            tmp_path / f"detector/fold{fold}/two_stage.pt",
            two_stage,
            {
                **common,
                "fold": fold,
                "name": "two_stage",
                "image_class_names": [],
                "positive": [],
                "decode": family_settings(detector_params, "two_stage").decode.__dict__,
            },
        )
    spec = PredictorSpec(
        preprocess={"size": SIZE, "low_percentile": 0.0, "high_percentile": 100.0},
        fmt="rsna",
        class_names=["Lung Opacity"],
        classifier_tta={"augmentations": 0, "seed": 0, "batch_size": 4},
        detector_tta={"hflip": True, "scales": [1.0], "batch_size": 4},
        recipe=RECIPE.to_dict(),
        classifiers=[],
        detectors=[
            f"detector/fold{k}/{name}" for k in (0, 1) for name in ("model.pt", "two_stage.pt")
        ],
    )
    ids = [f"img{k}" for k in range(4)]
    paths = []
    for image_id, array in zip(ids, images()):
        cv2.imwrite(str(tmp_path / f"{image_id}.png"), array)
        paths.append(tmp_path / f"{image_id}.png")
    predictor = EnsemblePredictor(spec, tmp_path, device="cpu")
    members = predictor.predict_members(predictor.load_images(paths, ids))
    assert set(members.images["model"]) == {"retinanet", "two_stage"}
    assert len(members.images) == 4 * 2 * 2 * 2  # images x folds x families x views
    truth = pd.DataFrame(
        {"image_id": ids[:2], "x": 40.0, "y": [30.0, 35.0], "w": 30.0, "h": 30.0, "class_id": 0}
    )
    holdout = Holdout(members, truth, ids, "rsna", {})
    table = ablations(holdout, RECIPE)
    assert {"model_retinanet", "model_two_stage", *(f"models_fused_{m}" for m in FUSERS)} <= set(
        table
    )
    alone = holdout.final(RECIPE, only_models(members, ["two_stage"]))
    assert set(alone["image_id"]) <= set(ids) and table["model_two_stage"]["n_boxes"] == len(alone)
    assert table["model_two_stage"]["score"] == pytest.approx(holdout.score(alone))
    assert table["ensemble"]["n_boxes"] == len(predictor.ensemble(members).boxes)
