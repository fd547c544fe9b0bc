"""ops.paro_reorder (arXiv 2506.16054): every axis order round-trips exactly, the candidate orders, bad orders."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.paro_reorder import axis_orders, inverse_permutation, reorder_permutation


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), prefix=st.integers(0, 2), data=st.data())
def test_every_order_round_trips_exactly(shape: list[int], prefix: int, data: st.DataObject) -> None:
    order = data.draw(st.sampled_from(axis_orders(len(shape))))
    perm = reorder_permutation(tuple(shape), order, prefix)
    inv = inverse_permutation(perm)
    n = prefix + math.prod(shape)
    assert torch.equal(perm[inv], torch.arange(n)) and torch.equal(inv[perm], torch.arange(n))
    x = rand(2, n, 3)
    assert torch.equal(x[:, perm][:, inv], x)
    # position p of the reordered grid holds the token whose coordinates, read in `order`, count up to p
    coords = torch.stack(torch.unravel_index(perm[prefix:] - prefix, tuple(shape)), -1)
    strides = [math.prod([shape[a] for a in order[i + 1:]]) for i in range(len(order))]
    assert torch.equal(sum(coords[:, a] * s for a, s in zip(order, strides, strict=True)), torch.arange(n - prefix))


def test_six_orders_for_a_video_grid() -> None:
    assert len(set(axis_orders(3))) == 6 and axis_orders(3)[0] == (0, 1, 2)


def test_bad_order_raises():
    with pytest.raises(ValueError, match="order"):
        reorder_permutation((2, 3), (0, 0))
