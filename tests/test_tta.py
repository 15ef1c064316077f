"""Classifier TTA: the views, their seeding, and per-view probabilities."""

import numpy as np
import pytest
import torch

from cxrdet.config import TrainParams
from cxrdet.infer.tta import (
    TtaView,
    ViewTransforms,
    pixel_key,
    predict_tta,
    tta_views,
    view_seed,
)

RUNTIME = TrainParams(progress=False)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 48), dtype=np.uint8)


def test_default_views_are_the_first_places_fifteen():
    views = tta_views(4)
    assert len(views) == 15
    assert [v.name for v in views[:5]] == [
        "original",
        "original+aug1",
        "original+aug2",
        "original+aug3",
        "original+aug4",
    ]
    assert {v.base for v in views} == {"original", "inverted", "flipped"}
    assert [v.name for v in tta_views(0)] == ["original", "inverted", "flipped"]


def test_base_views_are_identity_inversion_and_mirror(image):
    transform = ViewTransforms()
    assert np.array_equal(transform(image, TtaView("original", 0), 0), image)
    assert np.array_equal(transform(image, TtaView("inverted", 0), 0), 255 - image)
    assert np.array_equal(transform(image, TtaView("flipped", 0), 0), image[:, ::-1])


def test_flipped_view_of_flipped_image_is_the_original(image):
    transform = ViewTransforms()
    flipped = transform(image, TtaView("flipped", 0), 0)
    assert np.array_equal(transform(flipped, TtaView("flipped", 0), 0), image)
    inverted = transform(image, TtaView("inverted", 0), 0)
    assert np.array_equal(transform(inverted, TtaView("inverted", 0), 0), image)


def test_random_views_are_seeded_by_the_pixels_and_view(image):
    transform = ViewTransforms()
    view = TtaView("original", 1)
    first = transform(image, view, view_seed(0, pixel_key(image), 1))
    assert np.array_equal(first, transform(image, view, view_seed(0, pixel_key(image.copy()), 1)))
    rng = np.random.default_rng(1)
    others = [
        transform(other, view, view_seed(0, pixel_key(other), 1))
        for other in (image ^ rng.integers(0, 2, image.shape, dtype=np.uint8) for _ in range(7))
    ]
    assert (
        len({view_seed(0, pixel_key(o), 1) for o in others} | {view_seed(0, pixel_key(image), 1)})
        == 8
    )
    assert not np.array_equal(first, image)  # an augmented view is always changed


def test_one_image_under_two_ids_gets_identical_probabilities(image):
    """Same image, same answer: the random views never depend on the image id."""
    images = FakeImages([image, image.copy()])
    images.image_ids = ["real", "patient-42"]
    probs = predict_tta(
        MeanBrightness(),
        images,
        size=48,
        views=tta_views(4),
        seed=0,
        batch_size=2,
        device=torch.device("cpu"),
        runtime=RUNTIME,
    )
    np.testing.assert_array_equal(probs[0], probs[1])


class MeanBrightness(torch.nn.Module):
    """A stand-in classifier whose 2-class logits depend on the image's brightness."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3))
        return torch.stack([-mean, mean], dim=1)


class FakeImages:
    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.image_ids = [f"img{k}" for k in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int, size: int) -> np.ndarray:
        return self.images[index]


def test_every_views_probabilities_are_kept_in_image_order(image):
    images = FakeImages([image, np.full_like(image, 30), np.full_like(image, 220)])
    views = tta_views(2)
    probs = predict_tta(
        MeanBrightness(),
        images,
        size=48,
        views=views,
        seed=0,
        batch_size=2,
        device=torch.device("cpu"),
        runtime=RUNTIME,
    )
    assert probs.shape == (3, 9, 2)
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, rtol=1e-5)
    original, inverted = views.index(TtaView("original", 0)), views.index(TtaView("inverted", 0))
    assert probs[1, original, 1] < 0.5 < probs[1, inverted, 1]  # a dark image, then inverted
    again = predict_tta(
        MeanBrightness(),
        images,
        size=48,
        views=views,
        seed=0,
        batch_size=3,
        device=torch.device("cpu"),
        runtime=RUNTIME,
    )
    np.testing.assert_array_equal(probs, again)  # batching does not change any view
