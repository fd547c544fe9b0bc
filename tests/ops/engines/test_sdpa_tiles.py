"""The tiled fast path equals the naive dense reference for every separable mask and the sliding window."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import masks
from visattn._checks import Shape
from visattn.masks import AxisRule, SeparableMask
from visattn.ops import explain, masked_attention, tile_plan, tiled_attention
from visattn.ops.engines.sdpa_tiles import key_tiles, run_tile_plan
from visattn.ops.engines.tile_axis import axis_layout
from visattn.testing import random_qkv as qkv

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(q, k, v, mask, shape, prefix=0):
    return masked_attention(q, k, v, mask, shape, prefix, backend="reference")


def assert_matches_reference(mask, shape, prefix=0, batch=2, heads=2, dim=4, tile_sizes=None, unfold=True,
                             contiguous=True, seed=0):
    n = prefix + math.prod(shape)
    q, k, v = qkv(batch, heads, n, dim, seed=seed, contiguous=contiguous)
    plan = tile_plan(mask, tuple(shape), prefix, tile_sizes, unfold)
    expected = reference(q, k, v, mask, shape, prefix)
    with torch.no_grad():
        torch.testing.assert_close(run_tile_plan(plan, q, k, v), expected, rtol=1e-10, atol=1e-10)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = run_tile_plan(plan, *leaves)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=out.dtype)
    got = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(reference(*ref_leaves, mask, shape, prefix), ref_leaves, grad)
    for name, g, w in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"grad {name}: {m}")
    return plan


@st.composite
def neighborhood_cases(draw):
    ndim = draw(st.integers(1, 3))
    limit = {1: 12, 2: 8, 3: 5}[ndim]
    kernel, dilation, stride, causal, shape, tiles = [], [], [], [], [], []
    for _ in range(ndim):
        k = draw(st.integers(1, 4))
        d = draw(st.integers(1, 3))
        length = draw(st.integers(k * d, k * d + limit))
        kernel.append(k)
        dilation.append(d)
        stride.append(draw(st.integers(1, k)))
        causal.append(draw(st.booleans()))
        shape.append(length)
        tiles.append(draw(st.integers(1, length)))
    mask = masks.neighborhood_mask(tuple(kernel), tuple(stride), tuple(dilation), tuple(causal))
    chosen = draw(st.sampled_from([None, tuple(tiles)]))
    return mask, tuple(shape), chosen


@settings(max_examples=40, deadline=None)
@given(case=neighborhood_cases(), prefix=st.integers(0, 2), unfold=st.booleans(), batch=st.integers(1, 2),
       heads=st.integers(1, 2))
def test_neighborhood_matches_reference(case, prefix, unfold, batch, heads):
    mask, shape, tiles = case
    assert_matches_reference(mask, shape, prefix, batch=batch, heads=heads, dim=3, tile_sizes=tiles, unfold=unfold)


STRUCTURED = [
    (masks.window_mask(3), (6, 9)),
    (masks.window_mask((2, 3)), (4, 9)),
    (masks.grid_mask(3), (6, 9)),
    (masks.grid_mask((2, 3)), (4, 9)),
    (masks.halo_mask(3, 1), (6, 9)),
    (masks.halo_mask((2, 4), (2, 1)), (6, 8)),
    (masks.axial_mask(0), (5, 7)),
    (masks.axial_mask(-1), (3, 4, 5)),
    (masks.axial_mask(1), (3, 4, 5)),
    (masks.strip_mask("rows", 2), (6, 5)),
    (masks.strip_mask("columns", 3), (4, 9)),
    (masks.sliding_window_mask(5), (23,)),
    (masks.sliding_window_mask(4), (4, 7)),
    (masks.sliding_window_mask(6, is_causal=True), (31,)),
    (masks.sliding_window_mask(1, is_causal=True), (9,)),
    (masks.neighborhood_mask((3, 5), dilation=(2, 1), stride=(1, 2), is_causal=(False, True)), (9, 11)),
    (masks.neighborhood_mask(3, dilation=2, stride=3, is_causal=True), (6, 7, 8)),
]


@pytest.mark.parametrize("prefix", [0, 2])
@pytest.mark.parametrize(("mask", "shape"), STRUCTURED, ids=lambda x: repr(x)[:40])
def test_structured_masks_match_reference(mask, shape, prefix):
    assert_matches_reference(mask, shape, prefix, contiguous=False)


@pytest.mark.parametrize(("mask", "shape", "tiles"), [
    (masks.neighborhood_mask(3), (10, 11), (2, 3)),
    (masks.neighborhood_mask(5), (13,), (4,)),
    (masks.sliding_window_mask(7, is_causal=True), (29,), (4,)),
    (masks.halo_mask(2, 1), (6, 8), (2, 2)),
])
@pytest.mark.parametrize("unfold", [True, False])
def test_explicit_tiles_and_both_key_layouts(mask, shape, tiles, unfold):
    plan = assert_matches_reference(mask, shape, 0, tile_sizes=tiles, unfold=unfold, seed=3)
    assert plan.tile_sizes == tiles
    assert (plan.unfold_axis is None) == (not unfold)


def test_masked_attention_routes_structured_masks_to_the_tiled_path():
    for mask in (masks.neighborhood_mask(3), masks.window_mask(2), masks.sliding_window_mask(3)):
        assert explain(mask, (6, 6), 1, device="cuda").engine == "sdpa_tiles"
        assert explain(mask, (6, 6), 1, dtype=torch.bfloat16).engine == "sdpa_tiles"
    q, k, v = qkv(1, 2, 1 + 36, 4)
    expected = reference(q, k, v, masks.neighborhood_mask(3), (6, 6), 1)
    for backend in ("fast", "auto"):
        out = masked_attention(q, k, v, masks.neighborhood_mask(3), (6, 6), 1, backend=backend)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_full_and_causal_sequence_masks_are_left_to_sdpa():
    q, k, v = qkv(1, 1, 8, 4)
    for mask, engine in ((masks.full_mask(), "sdpa"), (masks.causal_mask(), "sdpa_causal")):
        assert explain(mask, (8,), backend="fast").engine == engine
        for backend in ("fast", "auto"):
            torch.testing.assert_close(masked_attention(q, k, v, mask, (8,), backend=backend),
                                       reference(q, k, v, mask, (8,)))


@dataclass(frozen=True)
class _ParityAxis(AxisRule):
    """Not an interval: a coordinate sees the coordinates of equal parity within ``reach``."""

    reach: int

    def allowed(self, xq, xk, length):
        return ((xq - xk) % 2 == 0) & ((xq - xk).abs() <= self.reach)


@dataclass(frozen=True)
class _EvenRowsAxis(AxisRule):
    """Odd coordinates see nothing (their output must be 0); even ones see themselves and the next one."""

    def allowed(self, xq, xk, length):
        return (xq % 2 == 0) & (xk >= xq) & (xk <= xq + 1)


@dataclass(frozen=True)
class _CustomMask(SeparableMask):
    rules: tuple[AxisRule, ...]

    def axis_rules(self, shape: Shape) -> tuple[AxisRule, ...]:
        return self.rules


@dataclass(frozen=True)
class _HalfAxis(AxisRule):
    """Not a progression: a coordinate sees the first half of the axis and itself."""

    def allowed(self, xq, xk, length):
        return (xk < length // 2) | (xk == xq)


def test_rules_are_laid_out_from_their_own_key_sets():
    """A rule the engine has never seen is grouped from its key sets: parity within a reach is two groups of
    intervals (like a dilated neighborhood), not a per-pair scan."""
    layout = axis_layout(_ParityAxis(4), 11)
    assert layout.interval and layout.groups == 2 and layout.group_length == 6
    assert axis_layout(masks.GridAxis(4), 12).tile_sizes == (4,)
    assert axis_layout(masks.BlockAxis(3), 12).tile_sizes == (3,)
    assert not axis_layout(_HalfAxis(), 12).interval
    assert_matches_reference(_CustomMask((_ParityAxis(4), masks.NeighborhoodAxis(3))), (9, 7))


def test_rules_without_progressions_are_scanned_and_evaluated_per_pair():
    assert_matches_reference(_CustomMask((_HalfAxis(), masks.NeighborhoodAxis(3))), (9, 7))


def test_queries_that_see_no_key_give_zero():
    mask = _CustomMask((_EvenRowsAxis(), masks.FullAxis()))
    plan = assert_matches_reference(mask, (7, 3))
    assert plan.empty is not None
    q, k, v = qkv(1, 1, 21, 4)
    with torch.no_grad():
        out = run_tile_plan(plan, q, k, v).view(7, 3, 4)
    assert bool((out[1::2] == 0).all())


def test_value_head_dim_of_its_own_and_empty_batch():
    q, k = qkv(2, 3, 1 + 35, 4)[:2]
    v = torch.randn(2, 3, 36, 6, dtype=torch.float64)
    mask = masks.neighborhood_mask(3)
    torch.testing.assert_close(tiled_attention(q, k, v, mask, (5, 7), 1), reference(q, k, v, mask, (5, 7), 1))
    empty = torch.randn(0, 3, 36, 4, requires_grad=True)
    out = tiled_attention(empty, empty, empty, mask, (5, 7), 1)
    out.sum().backward()
    assert out.shape == empty.grad.shape == (0, 3, 36, 4)


def test_gradcheck_small():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 1 + 18, 3, seed=5))
    mask = masks.neighborhood_mask((3, 3), dilation=(1, 2), is_causal=(True, False))
    assert torch.autograd.gradcheck(lambda a, b, c: tiled_attention(a, b, c, mask, (3, 6), 1), (q, k, v))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize(("mask", "shape", "prefix"), [
    (masks.neighborhood_mask(5), (17, 19), 0),
    (masks.neighborhood_mask((3, 3, 3), dilation=(1, 2, 1)), (5, 8, 7), 1),
    (masks.sliding_window_mask(33), (301,), 0),
    (masks.halo_mask(4, 2), (16, 12), 1),
])
def test_low_precision_within_tolerance(mask, shape, prefix, dtype, tol):
    q, k, v = qkv(2, 3, prefix + math.prod(shape), 16, seed=7)
    expected = reference(q, k, v, mask, shape, prefix)
    out = tiled_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, shape, prefix)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol)


@pytest.mark.parametrize(("mask", "kernel"), [(masks.neighborhood_mask(7), 7), (masks.halo_mask(8, 3), 14)])
def test_intermediates_grow_like_n_times_window_not_n_squared(mask, kernel):
    """Scores, gathered key rows and mask elements per batch-head are O(N * W^2): bounded by a constant times
    N * kernel^2 at every size, while N^2 grows past them."""
    for side in (32, 64, 128, 256):
        plan = tile_plan(mask, (side, side))
        n = side * side
        assert plan.score_elements <= 6 * n * kernel ** 2
        assert plan.key_rows <= 4 * n
        assert plan.mask_elements <= plan.score_elements
    assert plan.score_elements < n * n / 10


def test_one_dimensional_masks_share_a_few_small_masks():
    plan = tile_plan(masks.neighborhood_mask(257), (8192,))
    assert len(plan.runs) <= 16
    assert plan.mask_elements <= 16 * plan.tile_queries * plan.tile_keys
    assert plan.score_elements <= 4 * 8192 * 257


def test_key_tiles_along_the_unfold_axis_are_views():
    plan = tile_plan(masks.neighborhood_mask(5), (40, 24), 0, (4, 8))
    assert plan.unfold_axis is not None
    rows = torch.randn(1, 2, plan.key_rows, 4)
    tiles = key_tiles(plan, rows)
    assert tiles.shape == (2, plan.num_tiles, plan.tile_keys, 4)
    assert tiles.untyped_storage().data_ptr() == rows.untyped_storage().data_ptr()


def test_bad_arguments_raise_clear_errors():
    q, k, v = qkv(1, 1, 16, 4)
    with pytest.raises(ValueError, match="tile_sizes"):
        tiled_attention(q, k, v, masks.neighborhood_mask(3), (4, 4), tile_sizes=(2,))
    with pytest.raises(ValueError, match="tile_sizes"):
        tiled_attention(q, k, v, masks.neighborhood_mask(3), (4, 4), tile_sizes=(2, 0))
    with pytest.raises(TypeError, match="SeparableMask or SequenceMask"):
        tiled_attention(q, k, v, masks.neighborhood_mask(3) & masks.window_mask(2), (4, 4))
    with pytest.raises(ValueError, match="shape"):
        tiled_attention(q, k, v, masks.neighborhood_mask(3), (5, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        tiled_attention(q, k, v, masks.neighborhood_mask(5), (4, 4))
