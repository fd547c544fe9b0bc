"""visattn.tasks.digits: the digits tensors shared by the benchmarks and tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn.tasks.digits import HOLDOUT, digits_tensors, heldout_digits, stratified_digits

pytest.importorskip("sklearn")


def test_digits_tensors_are_the_8x8_digits_in_unit_range() -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = digits_tensors()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0].double(), torch.from_numpy(data.images) / 16)
    assert torch.equal(y, torch.from_numpy(data.target))


def test_nearest_upscaling_repeats_each_pixel_and_channels_are_copies() -> None:
    small, _ = digits_tensors()
    x, _ = digits_tensors(24, channels=3, mode="nearest")
    assert x.shape == (1797, 3, 24, 24)
    expected = np.kron(small[:5, 0].numpy(), np.ones((1, 3, 3), dtype=np.float32))
    assert np.array_equal(x[:5, 0].numpy(), expected)
    assert torch.equal(x[:, 1], x[:, 0]) and torch.equal(x[:, 2], x[:, 0])


def test_stratified_split_is_standardised_on_the_training_images() -> None:
    x_train, y_train, x_test, y_test = stratified_digits(16, seed=3)
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 450
    assert x_train.mean().abs() < 1e-5 and (x_train.std() - 1).abs() < 1e-5
    counts = torch.bincount(y_test, minlength=10).double() / torch.bincount(y_train, minlength=10).double()
    assert torch.allclose(counts, torch.full((10,), 1 / 3, dtype=torch.float64), atol=0.02)
    again = stratified_digits(16, seed=3)
    other = stratified_digits(16, seed=4)
    assert torch.equal(again[1], y_train) and not torch.equal(other[1], y_train)


def test_heldout_split_holds_out_every_fifth_image() -> None:
    (x_train, y_train), (x_test, y_test) = heldout_digits(16, channels=3)
    x, y = digits_tensors(16)
    assert x_train.shape == (1437, 3, 16, 16) and x_test.shape == (360, 3, 16, 16)
    assert torch.equal(y_test, y[::HOLDOUT])
    everything = torch.cat([x_train, x_test])[:, 0]
    assert everything.mean().abs() < 1e-5 and (everything.std() - 1).abs() < 1e-5
    assert torch.allclose(x_test[:, 0], (x[::HOLDOUT, 0] - x.mean()) / x.std())


@pytest.mark.parametrize("kwargs", [dict(size=0), dict(size=2.0), dict(channels=0), dict(channels=True)])
def test_bad_input_names_the_argument(kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        digits_tensors(**kwargs)
    with pytest.raises(ValueError, match=name):
        heldout_digits(**kwargs)
