"""bench/quality.py's parts on real X-rays (../shared/data/nih-bbox, read in place): the
patient-grouped split, recipe overrides, the stock detectors on cxrdet's loop, the scoring.
The whole bench runs in --quick mode in tests/test_bench.py (slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))
import quality  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (quality.DEFAULT_DATA / "annotations.csv").is_file(),
    reason=f"the real development set is not at {quality.DEFAULT_DATA} (set CXRDET_NIH_BBOX)",
)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> quality.Parts:
    return quality.prepare_parts(
        quality.DEFAULT_DATA, 128, tmp_path_factory.mktemp("nih"), seed=0, limit=90
    )


def test_split_is_patient_grouped_and_disjoint(parts):
    images = parts.prepared.images.set_index("image_id")
    groups = {
        name: set(images.loc[getattr(parts, name), "patient_id"])
        for name in ("train", "val", "holdout")
    }
    assert parts.train and parts.val and parts.holdout
    assert len(parts.train) + len(parts.val) + len(parts.holdout) <= 90
    assert not groups["train"] & groups["holdout"] and not groups["val"] & groups["holdout"]
    assert not groups["train"] & groups["val"]
    assert parts.prepared.info["class_names"][:2] == ["Atelectasis", "Cardiomegaly"]


def test_set_overrides_reach_the_recipe():
    overrides = quality.parse_sets(["detector.p2=false", "optim.lr=3e-4", "tta.scales=[0.8, 1.0]"])
    params = quality.recipe_params(overrides)
    assert (
        params.p2 is False
        and params.optim.lr == pytest.approx(3e-4)
        and params.tta.scales == [0.8, 1.0]
    )
    assert (
        params.fpn_channels == quality.RECIPE["fpn_channels"]
    )  # untouched knobs keep the recipe's value
    with pytest.raises(ValueError, match="p2"):
        quality.recipe_params(quality.parse_sets(["p2=maybe"]))


def test_truth_as_predictions_scores_one(parts):
    truth = parts.prepared.boxes
    val = truth[truth["image_id"].isin(parts.val)].assign(score=0.9)
    holdout = truth[truth["image_id"].isin(parts.holdout)].assign(score=0.9)
    scored = quality.score("truth", parts, val, holdout, epochs=1, train_s=1.0)
    assert scored.map == pytest.approx(1.0) and scored.rsna == pytest.approx(1.0)
    assert set(scored.per_class) <= set(parts.prepared.info["class_names"])


@pytest.mark.parametrize("kind, offset", [("retinanet", 0), ("faster_rcnn", 1)])
def test_stock_detectors_learn_on_cxrdets_batches(parts, kind, offset):
    """One batch of real images: a finite loss with gradients, then detections in the task's
    prediction format with labels back in the prepared class ids."""
    params = quality.recipe_params({"image_size": 128})
    classes = len(parts.prepared.info["class_names"])
    build = quality.stock_retinanet if kind == "retinanet" else quality.stock_faster_rcnn
    torch.manual_seed(0)
    model = build("resnet18", 128, classes)
    task = quality.StockTask(label_offset=offset)
    train_set, _ = quality.datasets(parts, params, None)
    batch = quality.collate_detection([train_set[k] for k in range(4)])
    model.train()
    loss = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters())
    assert quality.cpu_seconds_per_image(model, task, train_set, 2) > 0
    model.eval()
    with torch.no_grad():
        out = task.predict(model, batch)
    assert len(out["boxes"]) == 4 and all(b.shape[1:] == (4,) for b in out["boxes"] if len(b))
    labels = np.concatenate(out["labels"]) if out["labels"] else np.array([])
    assert ((labels >= 0) & (labels < classes)).all()


def test_schedule_follows_the_budget(parts):
    assert quality.schedule_for(100.0, 0.1, 100) == quality.Schedule(10, 100)
    # A fraction of a pass more or less: the nearest whole epochs over the images that buys.
    assert quality.schedule_for(105.0, 0.1, 100) == quality.Schedule(10, 100)
    assert quality.schedule_for(16.0, 0.1, 100) == quality.Schedule(2, 80)
    # Less than one pass: one epoch over the images the budget buys, never an overspend.
    assert quality.schedule_for(4.0, 0.1, 100) == quality.Schedule(1, 40)
    trimmed = quality.within_budget(parts, quality.Schedule(1, 5), seed=0)
    assert len(trimmed.train) == 5 and set(trimmed.train) <= set(parts.train)
    assert trimmed.train == quality.within_budget(parts, quality.Schedule(1, 5), seed=0).train
    assert (trimmed.val, trimmed.holdout) == (parts.val, parts.holdout)
    assert quality.within_budget(parts, quality.Schedule(3, len(parts.train)), 0) is parts
    assert quality.epochs_seen(quality.Schedule(1, len(parts.train) // 2), parts) < 1


def test_folder_cpu_profile_carries_the_benchmarked_recipe(project_root):
    """profiles/folder-cpu.yaml trains the detector bench/quality.py measured (its knobs, not
    the budget-derived epochs), so the README's real-data table speaks of what users run."""
    from cxrdet.config import load_params

    profile = load_params(
        project_root / "params.yaml", profile=project_root / "profiles/folder-cpu.yaml"
    ).detector
    recipe = quality.recipe_params({})
    knobs = set(quality.RECIPE) - {"optim", "two_stage"}
    assert profile.model_dump(include=knobs) == recipe.model_dump(include=knobs)
    assert profile.optim.model_dump(exclude={"epochs"}) == recipe.optim.model_dump(
        exclude={"epochs"}
    )


PROFILES = sorted(
    path.name for path in (Path(__file__).resolve().parents[1] / "profiles").glob("*.yaml")
)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_validates(project_root, profile):
    from cxrdet.config import load_params

    params = load_params(project_root / "params.yaml", profile=project_root / "profiles" / profile)
    assert set(params.detector.folds) <= set(range(params.split.folds))


BAD_ARGUMENTS = [(["--set", "p2=maybe"], "p2"), (["--data", "/nonexistent"], "/nonexistent")]


@pytest.mark.parametrize("arguments, named", BAD_ARGUMENTS)
def test_bad_arguments_exit_2_naming_the_problem(project_root, arguments, named):
    import subprocess

    completed = subprocess.run(
        [sys.executable, str(BENCH / "quality.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project_root,
    )
    assert (
        completed.returncode == 2
        and named in completed.stderr
        and "Traceback" not in completed.stderr
    )


@pytest.mark.parametrize("family", sorted(quality.ABLATIONS))
def test_every_ablation_is_one_valid_change_of_the_recipe(family):
    recipe = quality.recipe_params({})
    for name, change in quality.ABLATIONS[family].items():
        changed = quality.recipe_params(change)
        assert changed != recipe, f"{family} ablation {name!r} changes nothing"
        assert changed.model_dump(exclude=set(change)) == recipe.model_dump(exclude=set(change))
