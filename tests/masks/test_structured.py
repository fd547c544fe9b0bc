"""Window, grid, halo, axial, strip, sliding, full and causal masks against per-pair definitions written here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from visattn import masks as M


def brute(shape, allowed) -> torch.Tensor:
    coords = list(itertools.product(*[range(n) for n in shape]))
    return torch.tensor([[bool(allowed(a, b)) for b in coords] for a in coords], dtype=torch.bool)


def linear(shape, c) -> int:
    return sum(x * math.prod(shape[i + 1:]) for i, x in enumerate(c))


@st.composite
def divisible_grid(draw, max_dims=3):
    ndim = draw(st.integers(1, max_dims))
    parts = [draw(st.integers(1, 4)) for _ in range(ndim)]
    counts = [draw(st.integers(1, 4)) for _ in range(ndim)]
    shape = tuple(p * c for p, c in zip(parts, counts, strict=True))
    assume(math.prod(shape) <= 300)
    return shape, tuple(parts), tuple(counts)


@settings(max_examples=40, deadline=None)
@given(divisible_grid())
def test_window_mask(case):
    shape, window, _ = case
    expected = brute(shape, lambda a, b: all(x // p == y // p for x, y, p in zip(a, b, window, strict=True)))
    assert torch.equal(M.materialize(M.window_mask(window), shape), expected)


@settings(max_examples=40, deadline=None)
@given(divisible_grid())
def test_grid_mask_gathers_tokens_spaced_length_over_grid(case):
    shape, _, grid = case
    steps = [n // g for n, g in zip(shape, grid, strict=True)]
    expected = brute(shape, lambda a, b: all(x % s == y % s for x, y, s in zip(a, b, steps, strict=True)))
    dense = M.materialize(M.grid_mask(grid), shape)
    assert torch.equal(dense, expected)
    assert torch.all(dense.sum(-1) == math.prod(grid))


@settings(max_examples=40, deadline=None)
@given(divisible_grid(max_dims=2), st.integers(0, 4))
def test_halo_mask(case, halo):
    shape, block, _ = case
    halo = min(halo, min(block))

    def allowed(a, b):
        return all((x // p) * p - halo <= y < (x // p) * p + p + halo for x, y, p in zip(a, b, block, strict=True))

    mask = M.halo_mask(block, halo)
    assert torch.equal(M.materialize(mask, shape), brute(shape, allowed))
    assert M.pair_count(mask, shape) == int(brute(shape, allowed).sum())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.data())
def test_axial_mask(shape, data):
    shape = tuple(shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    along = axis % len(shape)
    expected = brute(shape, lambda a, b: all(x == y for i, (x, y) in enumerate(zip(a, b, strict=True)) if i != along))
    assert torch.equal(M.materialize(M.axial_mask(axis), shape), expected)


@pytest.mark.parametrize("orientation", ["rows", "columns"])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_strip_mask(orientation, width):
    shape = (6, 6)
    axis = 0 if orientation == "rows" else 1
    expected = brute(shape, lambda a, b: a[axis] // width == b[axis] // width)
    assert torch.equal(M.materialize(M.strip_mask(orientation, width), shape), expected)


def test_strip_of_width_one_is_axial():
    shape = (5, 7)
    assert torch.equal(M.materialize(M.strip_mask("rows"), shape), M.materialize(M.axial_mask(1), shape))
    assert torch.equal(M.materialize(M.strip_mask("columns"), shape), M.materialize(M.axial_mask(0), shape))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.booleans())
def test_sliding_window_mask(n, window, causal):
    def allowed(a, b):
        off = b[0] - a[0]
        if causal:
            return -window < off <= 0
        return -(window // 2) <= off <= window // 2 - (1 - window % 2)

    mask = M.sliding_window_mask(window, causal)
    dense = M.materialize(mask, (n,))
    assert torch.equal(dense, brute((n,), allowed))
    assert M.pair_count(mask, (n,)) == int(dense.sum())


def test_sliding_window_runs_over_the_flattened_grid():
    shape = (3, 4)
    dense = M.materialize(M.sliding_window_mask(3), shape)
    assert torch.equal(dense, M.materialize(M.sliding_window_mask(3), (12,)))


def test_full_and_causal():
    assert M.materialize(M.full_mask(), (3, 3)).all()
    assert torch.equal(M.materialize(M.causal_mask(), (7,)), torch.ones(7, 7, dtype=torch.bool).tril())
    assert M.pair_count(M.causal_mask(), (7,), 2) == int(M.materialize(M.causal_mask(), (7,), 2).sum())


def test_and_or_combinators():
    shape = (6, 6)
    a, b = M.neighborhood_mask(3), M.axial_mask(0)
    da, db = M.materialize(a, shape), M.materialize(b, shape)
    assert torch.equal(M.materialize(a & b, shape), da & db)
    assert torch.equal(M.materialize(a | b, shape), da | db)
    assert torch.equal(M.materialize(M.and_masks(a, b, M.causal_mask()), shape),
                       da & db & M.materialize(M.causal_mask(), shape))
    assert M.pair_count(a | b, shape, 1) == int(M.materialize(a | b, shape, 1).sum())
    n = 36
    idx = torch.arange(n + 1)
    mod = (a | b).mask_mod(shape, 1)
    assert torch.equal(mod(0, 0, idx[:, None], idx[None, :]), M.materialize(a | b, shape, 1))


def test_combinator_checks_every_part():
    with pytest.raises(ValueError, match="kernel_size"):
        M.materialize(M.axial_mask(0) & M.neighborhood_mask(9), (5, 5))
    with pytest.raises(TypeError, match="Mask"):
        M.and_masks(M.axial_mask(0), "causal")


@pytest.mark.parametrize(
    ("mask", "shape", "match"),
    [
        (M.window_mask(4), (6, 8), "window_size must divide"),
        (M.window_mask(9), (8, 8), "window_size must divide"),
        (M.grid_mask(3), (8, 9), "grid_size must divide"),
        (M.halo_mask(4, 5), (8, 8), "halo_size must be <= block_size"),
        (M.halo_mask(3, 1), (8, 9), "block_size must divide"),
        (M.axial_mask(2), (4, 4), "axis must index"),
        (M.strip_mask("rows", 3), (8, 8), "width must divide"),
        (M.strip_mask("rows"), (8,), "2-D shape"),
    ],
)
def test_bad_grids_raise(mask, shape, match):
    with pytest.raises(ValueError, match=match):
        M.materialize(mask, shape)


@pytest.mark.parametrize("shape", [(0, 3), (-1,), ()])
def test_bad_shape_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        M.materialize(M.full_mask(), shape)


def test_bad_prefix_raises():
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        M.materialize(M.full_mask(), (3,), num_prefix_tokens=-1)


def test_strip_orientation_is_checked():
    with pytest.raises(ValueError, match="orientation"):
        M.strip_mask("diagonal")
