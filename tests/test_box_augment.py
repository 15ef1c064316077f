"""Detector augmentation: the 8-point box rule, the Gaussian affine, seeded pipelines."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrdet.data.augment import A
from cxrdet.data.box_augment import (
    BoxAugmentSettings,
    EightPointAffine,
    GaussianAffine,
    apply_seeded_boxes,
    box_params,
    detector_augmentation,
    eight_point_boxes,
)

SIZE = 128


def rotation(angle: float, centre: tuple[float, float] = (SIZE / 2, SIZE / 2)) -> np.ndarray:
    return cv2.getRotationMatrix2D(centre, angle, 1.0)


def rotated_rectangle_mask(box: np.ndarray, matrix: np.ndarray, oversample: int = 8) -> np.ndarray:
    """The filled rectangle `box` rotated by `matrix`, rasterised finely (as a polygon)."""
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    mask = np.zeros((SIZE * oversample, SIZE * oversample), np.uint8)
    cv2.fillPoly(mask, [np.round(moved * oversample).astype(np.int32)], 1)
    return mask


def covered(mask: np.ndarray, box: np.ndarray, oversample: int = 8) -> float:
    x0, y0, x1, y1 = np.round(box * oversample).astype(int)
    return mask[y0:y1, x0:x1].sum() / mask.sum()


@pytest.mark.parametrize("angle", [6.0, 12.0, 20.0, 30.0])
@pytest.mark.parametrize("box", [[40.0, 50.0, 80.0, 70.0], [50.0, 30.0, 66.0, 90.0]])
def test_eight_points_are_tighter_than_corners_yet_cover_the_shape(angle, box):
    box = np.array(box)
    matrix = rotation(angle)
    corners = eight_point_boxes(box[None], matrix)[0]
    x0, y0, x1, y1 = box
    points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) @ matrix[:, :2].T + matrix[:, 2]
    four = np.array([*points.min(0), *points.max(0)])
    assert box_area(corners) < box_area(four)
    assert np.all(corners[:2] >= four[:2]) and np.all(corners[2:] <= four[2:])
    # The 4-corner box is the rotated rectangle's own box; the 8-point box still holds most of it.
    assert covered(rotated_rectangle_mask(box, matrix), corners) > 0.85


def test_identity_keeps_boxes():
    boxes = np.array([[10.0, 20.0, 30.0, 50.0], [0.0, 0.0, 128.0, 128.0]])
    assert np.allclose(eight_point_boxes(boxes, np.eye(3)), boxes)


def test_eight_point_affine_works_in_any_albumentations_pipeline():
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[40:70, 30:80] = 200
    pipeline = A.Compose([EightPointAffine(rotate=(20, 20), p=1.0)], bbox_params=box_params())
    out = pipeline(image=image, bboxes=np.array([[30.0, 40.0, 80.0, 70.0]]), labels=[0])
    largest = A.Compose([A.Affine(rotate=(20, 20), p=1.0)], bbox_params=box_params())(
        image=image, bboxes=np.array([[30.0, 40.0, 80.0, 70.0]]), labels=[0]
    )
    (ours,), (theirs,) = out["bboxes"], largest["bboxes"]
    assert (ours[2] - ours[0]) * (ours[3] - ours[1]) < (theirs[2] - theirs[0]) * (
        theirs[3] - theirs[1]
    )


def test_gaussian_affine_boxes_follow_a_lesion_and_replay_by_seed():
    # Lesions are blobs inside their boxes: an ellipse's box follows it within a pixel.
    image = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(image, (50, 50), (20, 10), 0, 0, 360, 255, -1)
    pipeline = A.Compose([GaussianAffine(p=1.0)], bbox_params=box_params())
    boxes, labels = np.array([[30.0, 40.0, 71.0, 61.0]], np.float32), np.array([0])
    for seed in range(8):
        moved, (box,), _ = apply_seeded_boxes(pipeline, image, boxes, labels, seed)
        ys, xs = np.nonzero(moved > 127)
        lesion = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
        assert np.abs(box - lesion).max() < 1.0
        again, (same,), _ = apply_seeded_boxes(pipeline, image, boxes, labels, seed)
        assert np.array_equal(moved, again) and np.array_equal(box, same)


def test_flip_and_empty_boxes():
    pipeline = detector_augmentation(
        BoxAugmentSettings(
            shift=0,
            scale_sigma=0,
            rotate_sigma=0,
            shear_sigma=0,
            hflip=1.0,
            blur=0,
            noise=0,
            gamma=0,
        )
    )
    image = np.zeros((SIZE, SIZE), np.uint8)
    _, boxes, labels = apply_seeded_boxes(
        pipeline, image, np.array([[10.0, 20.0, 30.0, 40.0]]), np.array([0]), 0
    )
    assert np.allclose(boxes, [[98.0, 20.0, 118.0, 40.0]]) and labels.tolist() == [0]
    out, boxes, labels = apply_seeded_boxes(
        pipeline, image, np.zeros((0, 4)), np.zeros(0, np.int64), 0
    )
    assert out.shape == (SIZE, SIZE) and boxes.shape == (0, 4) and labels.shape == (0,)


def test_boxes_leaving_the_image_are_dropped():
    pipeline = A.Compose(
        [EightPointAffine(translate_px={"x": (100, 100), "y": (0, 0)}, p=1.0)],
        bbox_params=box_params(),
    )
    image = np.zeros((SIZE, SIZE), np.uint8)
    out = pipeline(
        image=image,
        bboxes=np.array([[60.0, 10.0, 90.0, 30.0], [0.0, 10.0, 20.0, 30.0]]),
        labels=[0, 1],
    )
    assert list(out["labels"]) == [1]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="rotate_sigma must be >= 0"):
        GaussianAffine(rotate_sigma=-1.0)


def box_area(box: np.ndarray) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])
