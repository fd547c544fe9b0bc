"""The arena's procedural tasks: an exact oracle solves them, labels are balanced, the same seed gives the same
data, and bad arguments raise errors naming them."""

from __future__ import annotations

import numpy as np
import pytest

from visattn.tasks import digits, pathfinder, procedural, search_array


@pytest.mark.parametrize("task", list(procedural.TASKS))
@pytest.mark.parametrize("size", [32, 48])
def test_oracle_solves_every_sample(task, size):
    spec = procedural.get_task(task)
    for index in range(40):
        image, label = procedural.sample_image(task, size, index, seed=3)
        assert image.shape == (size, size) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert spec.oracle(image) == label, (task, size, index)


def test_digits_oracle_generalises_to_the_test_split():
    """Held-out digits are not copies of training ones, yet the nearest-neighbour oracle still reads them."""
    solved = [procedural.get_task("digits").oracle(img) == y
              for img, y in (procedural.sample_image("digits", 32, i, 0, "test") for i in range(100))]
    assert np.mean(solved) >= 0.9
    train = {d.tobytes() for label in range(10) for d in digits.digit_pool("train", label)}
    assert not any(d.tobytes() in train for label in range(10) for d in digits.digit_pool("test", label))


@pytest.mark.parametrize("task", list(procedural.TASKS))
def test_labels_balanced_and_seeded(task):
    spec = procedural.get_task(task)
    images, labels = procedural.make_split(task, 32, 4 * spec.num_classes, seed=5)
    assert images.shape == (4 * spec.num_classes, 1, 32, 32)
    assert np.bincount(labels.numpy(), minlength=spec.num_classes).tolist() == [4] * spec.num_classes
    again, labels_again = procedural.make_split(task, 32, 4 * spec.num_classes, seed=5)
    assert images.equal(again) and labels.equal(labels_again)
    other, _ = procedural.make_split(task, 32, 4 * spec.num_classes, seed=6)
    assert not images.equal(other)
    test, _ = procedural.make_split(task, 32, 4 * spec.num_classes, seed=5, split="test")
    assert not images.equal(test)


def test_search_classes_carry_the_same_ink():
    """A T and an L have the same five pixels: present and absent displays have equal ink (no brightness cue)."""
    images, labels = procedural.make_split("search", 32, 200, seed=0)
    ink = images.sum(dim=(1, 2, 3))
    assert ink[labels == 1].mean().item() == pytest.approx(ink[labels == 0].mean().item(), rel=0.1)


def test_pathfinder_negative_dots_are_on_different_curves():
    rng = np.random.default_rng(0)
    image = pathfinder.pathfinder_sample(40, 0, rng)
    assert pathfinder.pathfinder_oracle(image) == 0
    assert (image == pathfinder.DOT).sum() >= 2 * 4  # two dots, each at least partly on the canvas


def test_extrapolation_sizes():
    assert procedural.extrapolation_sizes("digits", 32, (1, 1.5, 2, 2.1)) == [32, 48, 64]
    assert procedural.extrapolation_sizes("pathfinder", 32, (1, 1.25)) == [32, 40]
    with pytest.raises(ValueError, match="factors"):
        procedural.extrapolation_sizes("digits", 32, (0.5,))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="task must be one of"):
        procedural.get_task("mnist")
    with pytest.raises(ValueError, match="multiple of 8"):
        procedural.sample_image("digits", 30, 0, 0)
    with pytest.raises(TypeError, match="size must be an int"):
        procedural.sample_image("digits", 32.0, 0, 0)
    with pytest.raises(ValueError, match="split"):
        procedural.sample_image("digits", 32, 0, 0, split="val")
    with pytest.raises(ValueError, match="count"):
        procedural.make_split("digits", 32, 0, 0)
    with pytest.raises(ValueError, match="label"):
        search_array.search_array_sample(32, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="curves"):
        pathfinder.pathfinder_sample(32, 1, np.random.default_rng(0), curves=1)
    with pytest.raises(ValueError, match="density"):
        search_array.search_array_sample(32, 1, np.random.default_rng(0), density=0.0)
