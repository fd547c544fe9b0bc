"""The fused tile kernel equals the naive dense reference on every progression mask and on hand-built tile lists."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import masks
from visattn.bench import peak_memory_bytes
from visattn.ops import attention, masked_attention
from visattn.ops.engines import direct, per_query
from visattn.ops.engines import fused_tiles as tile_kernel
from visattn.ops.engines.fused_tiles import build_tiles, disjoint_tile_sizes, progression_tiles
from visattn.ops.engines.kernel_ops import ROUTE_TILES, tile_attention
from visattn.ops.engines.layout import local_layout
from visattn.ops.native import native_library
from visattn.testing import random_qkv as qkv

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(native_library("tile_attention") is None, reason="no native kernel here"),
]


def reference(q, k, v, mask, shape, prefix=0):
    return masked_attention(q.double(), k.double(), v.double(), mask, shape, prefix, backend="reference")


def run(mask, shape, prefix, q, k, v, tile_sizes=None):
    layout = local_layout(mask, tuple(shape))
    return tile_attention(q, k, v, progression_tiles(layout, prefix, tile_sizes), prefix)


@settings(max_examples=40, deadline=None)
@given(prefix=st.integers(0, 2), batch=st.integers(1, 2), dim=st.sampled_from([3, 8, 16]), contiguous=st.booleans(),
       data=st.data())
def test_neighborhood_matches_reference(neighborhood_cases, prefix, batch, dim, contiguous, data):
    mask, shape = data.draw(neighborhood_cases)
    sizes = data.draw(st.one_of(st.none(), st.tuples(*[st.integers(1, 8) for _ in shape])))
    q, k, v = qkv(batch, 2, prefix + math.prod(shape), dim, contiguous=contiguous)
    torch.testing.assert_close(run(mask, shape, prefix, q, k, v, sizes), reference(q, k, v, mask, shape, prefix),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("mask", "shape"), [
    (masks.window_mask(3), (6, 9)),
    (masks.window_mask(8), (16, 24)),
    (masks.grid_mask(3), (6, 9)),
    (masks.halo_mask(4, 2), (8, 12)),
    (masks.axial_mask(0), (100, 3)),
    (masks.axial_mask(-1), (3, 4, 5)),
    (masks.strip_mask("rows", 2), (6, 5)),
    (masks.sliding_window_mask(5), (17,)),
    (masks.sliding_window_mask(70, is_causal=True), (150,)),
])
@pytest.mark.parametrize("prefix", [0, 3])
def test_structured_masks_match_reference(mask, shape, prefix):
    q, k, v = qkv(2, 2, prefix + math.prod(shape), 16)
    torch.testing.assert_close(run(mask, shape, prefix, q, k, v), reference(q, k, v, mask, shape, prefix),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim", [7, 16, 32, 64])
def test_float32_within_stated_tolerance(dim):
    """float32 outputs within 2e-5 of the float64 reference (unit-variance inputs scaled by 1.5)."""
    mask, shape = masks.neighborhood_mask(7), (11, 13)
    q, k, v = qkv(2, 2, 1 + 143, dim, dtype=torch.float32, seed=3, scale=1.5)
    torch.testing.assert_close(run(mask, shape, 1, q, k, v).double(), reference(q, k, v, mask, shape, 1),
                               rtol=2e-5, atol=2e-5)


def test_large_logits_stay_finite():
    mask, shape = masks.window_mask(4), (8, 8)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-2)):
        q, k, v = qkv(1, 2, 64, 16, dtype=dtype, scale=30.0)
        out = run(mask, shape, 0, q, k, v)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), reference(q, k, v, mask, shape), rtol=tol, atol=tol)


def test_hand_built_tiles_with_segments_chunks_and_empty_rows():
    """Two tiles over 150 tokens: several segments (masked and not), a segment longer than one 64-key chunk, and
    query rows that no segment lets see anything (output 0)."""
    gen = np.random.default_rng(0)
    n = 150
    allowed = np.zeros((n, n), dtype=bool)
    tiles = []
    for first, queries in enumerate((np.arange(0, 70), np.arange(70, 150))):
        segments = []
        for keys in (np.arange(0, 10), np.arange(20, 120), np.arange(130, 150)):
            if first == 1 and keys[0] == 0:
                allowed[np.ix_(queries, keys)] = True
                segments.append((keys, None))
                continue
            seg_mask = gen.random((len(queries), len(keys))) < 0.6
            if first == 0:
                seg_mask[:5] = False
            allowed[np.ix_(queries, keys)] = seg_mask
            segments.append((keys, seg_mask))
        tiles.append((queries, segments))
    q, k, v = qkv(1, 2, n, 8)
    got = tile_attention(q, k, v, build_tiles(tiles))
    torch.testing.assert_close(got, attention(q, k, v, mask=torch.from_numpy(allowed)), rtol=1e-10, atol=1e-10)
    assert bool((got[:, :, :5] == 0).all())


def test_tile_without_keys_outputs_zero_after_a_tile_that_left_nan():
    """A tile with no key segment after one whose values are NaN, on one thread (one workspace): the accumulator the
    first tile leaves behind must not leak into the second's output."""
    n = 40
    tiles = [(np.arange(0, 20), [(np.arange(0, 20), None)]), (np.arange(20, 40), [])]
    q, k, v = qkv(1, 1, n, 16)
    v[:, :, :20] = float("nan")
    got = tile_attention(q, k, v, build_tiles(tiles))
    assert bool(got[:, :, :20].isnan().all())
    assert bool((got[:, :, 20:] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("queries", "dim", "dim_v"), [(1, 16, 32), (2, 5, 3), (3, 32, 32), (17, 32, 32),
                                                       (19, 5, 7), (20, 16, 16), (49, 32, 32), (51, 32, 48)])
def test_tail_rows_and_register_blocks_match_reference(queries, dim, dim_v, dtype):
    """Tiles of every remainder past a vector of queries: up to 3 rows run one at a time (vector and scalar head
    dims), more are padded; 48 rows are one 3-vector register block. Masked and unmasked segments, one longer than a
    64-key chunk, and a tail row that sees no key."""
    gen = np.random.default_rng(queries)
    n = queries + 90
    allowed = np.zeros((n, n), dtype=bool)
    tile_queries = np.arange(queries)
    segments = []
    for keys in (np.arange(queries, queries + 70), np.arange(queries + 70, n)):
        seg_mask = gen.random((queries, len(keys))) < 0.5
        seg_mask[-1] = False
        allowed[np.ix_(tile_queries, keys)] = seg_mask
        segments.append((keys, seg_mask))
    all_keys = np.arange(queries)
    allowed[np.ix_(tile_queries, all_keys)] = True
    allowed[queries - 1] = False
    segments.append((all_keys, allowed[np.ix_(tile_queries, all_keys)]))
    gen_t = torch.Generator().manual_seed(queries)
    q, k = (torch.randn(1, 2, n, dim, generator=gen_t, dtype=dtype) for _ in range(2))
    v = torch.randn(1, 2, n, dim_v, generator=gen_t, dtype=dtype)
    got = tile_attention(q, k, v, build_tiles([(tile_queries, segments)]))[:, :, :queries]
    expected = attention(q.double(), k.double(), v.double(), mask=torch.from_numpy(allowed))[:, :, :queries]
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
    assert bool((got[:, :, queries - 1] == 0).all())


def test_runs_under_autograd_on_meta_and_refuses_other_dtypes():
    q, k, v = qkv(1, 1, 16, 4, dtype=torch.float32)
    windows = progression_tiles(local_layout(masks.window_mask(2), (4, 4)), 0)
    neighborhood = progression_tiles(local_layout(masks.neighborhood_mask((3, 1)), (16, 1)), 0, (4, 1))
    assert windows.keys_disjoint and not neighborhood.keys_disjoint
    assert tile_attention(q.requires_grad_(), k, v, windows).requires_grad
    assert tile_attention(q, k, v, neighborhood).shape == q.shape
    q = q.detach()
    with pytest.raises(TypeError, match="float32 or float64"):
        tile_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), windows)
    assert tile_attention(q.to("meta"), k.to("meta"), v.to("meta"), windows).shape == q.shape  # the fake kernel


def gradients(out, inputs, grad):
    return torch.autograd.grad(out, inputs, grad)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["window", "grid", "window_1d"]), size=st.integers(1, 5), counts=st.tuples(
    st.integers(1, 3), st.integers(1, 3)), batch=st.integers(1, 2), dim=st.sampled_from([3, 8, 16, 32, 128]),
    dim_v=st.sampled_from([5, 16, 48, 80]), contiguous=st.booleans())
def test_backward_on_disjoint_tiles_matches_reference(kind, size, counts, batch, dim, dim_v, contiguous):
    """Gradients of windows and grids (odd sizes, head dims off the vector width, dv != d, non-contiguous inputs)
    through the kernel's backward equal the float64 reference's."""
    if kind == "window_1d":
        mask, shape = masks.window_mask(size), (size * counts[0],)
    else:
        mask = masks.window_mask(size) if kind == "window" else masks.grid_mask(size)
        shape = (size * counts[0], size * counts[1])
    tiles = progression_tiles(local_layout(mask, shape), 0)
    assert tiles.keys_disjoint
    n = math.prod(shape)
    q, k = qkv(batch, 2, n, dim)[:2]
    v = qkv(batch, 2, n, dim_v)[2]
    if not contiguous:
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = tile_attention(*leaves, tiles)
    expected = reference(*leaves, mask, shape)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    for got, want in zip(gradients(out, leaves, grad), gradients(expected, leaves, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_backward_on_hand_built_tiles_with_masks_and_empty_rows():
    """Disjoint tiles with several masked segments, one longer than a 64-key chunk, tokens in no tile, and queries
    that see no key (zero output, zero gradient)."""
    gen = np.random.default_rng(1)
    n = 170
    allowed = np.zeros((n, n), dtype=bool)
    key_sets = [(np.arange(0, 10), np.arange(20, 100)), (np.arange(100, 120), np.arange(130, 165))]
    tiles = []
    for queries, keys_of_tile in zip((np.arange(0, 70), np.arange(70, 150)), key_sets, strict=True):
        segments = []
        for keys in keys_of_tile:
            seg_mask = gen.random((len(queries), len(keys))) < 0.6
            seg_mask[:3] = False
            allowed[np.ix_(queries, keys)] = seg_mask
            segments.append((keys, seg_mask))
        tiles.append((queries, segments))
    tile_list = build_tiles(tiles)
    assert tile_list.keys_disjoint
    leaves = [t.requires_grad_() for t in qkv(1, 2, n, 8)]
    out = tile_attention(*leaves, tile_list)
    expected = attention(*leaves, mask=torch.from_numpy(allowed))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    got = gradients(out, leaves, grad)
    for g, want in zip(got, gradients(expected, leaves, grad), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-9)
    assert bool((got[0][:, :, :3] == 0).all())


@pytest.mark.parametrize(("dim", "dim_v"), [(32, 32), (64, 64), (24, 40), (128, 80)])
def test_backward_float32_within_stated_tolerance(dim, dim_v):
    mask, shape = masks.window_mask(7), (14, 21)
    tiles = progression_tiles(local_layout(mask, shape), 0)
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(dim)
    q, k = (torch.randn(2, 3, n, dim, generator=gen) * 1.5 for _ in range(2))
    v = torch.randn(2, 3, n, dim_v, generator=gen)
    grad = torch.randn(2, 3, n, dim_v, generator=gen)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    got = gradients(tile_attention(*leaves, tiles), leaves, grad)
    leaves64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = gradients(reference(*leaves64, mask, shape), leaves64, grad.double())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(prefix=st.integers(0, 2), dim=st.sampled_from([3, 16]), threads=st.sampled_from([1, 2, 3]), data=st.data())
def test_backward_with_shared_keys_matches_reference(neighborhood_cases, prefix, dim, threads, data):
    """Neighborhoods (every kernel, dilation, stride and causal combination the cases draw) and prefix tokens: tiles
    share keys, so each thread adds into its own dK, dV copy; 1-3 threads."""
    mask, shape = data.draw(neighborhood_cases)
    q, k, v = qkv(2, 2, prefix + math.prod(shape), dim)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = run(mask, shape, prefix, *leaves)
        grad = torch.randn_like(out)
        got = gradients(out, leaves, grad)
    finally:
        torch.set_num_threads(saved)
    expected = reference(*leaves, mask, shape, prefix)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for g, want in zip(got, gradients(expected, leaves, grad), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("mask", "shape", "prefix"), [(masks.window_mask(4), (8, 8), 0),
                                                     (masks.neighborhood_mask(7), (16, 16), 1)])
def test_fast_backend_trains_on_the_kernel(monkeypatch, mask, shape, prefix):
    calls = []
    backward = tile_kernel.run_tiles_backward
    monkeypatch.setattr(tile_kernel, "run_tiles_backward", lambda *a: calls.append(1) or backward(*a))
    leaves = [t.requires_grad_() for t in qkv(1, 2, prefix + math.prod(shape), 8)]
    out = masked_attention(*leaves, mask, shape, prefix, backend="fast")
    grad = torch.randn_like(out)
    got = gradients(out, leaves, grad)
    assert calls
    for g, want in zip(got, gradients(reference(*leaves, mask, shape, prefix), leaves, grad), strict=True):
        torch.testing.assert_close(g, want)


def test_tile_choice_has_no_waste_on_windows_and_grids():
    for mask in (masks.window_mask(8), masks.grid_mask(8)):
        layout = local_layout(mask, (64, 64))
        tiles = progression_tiles(layout, 0)
        assert tiles.tile_sizes == (8, 8)
        assert tiles.score_elements == layout.pairs


@pytest.mark.parametrize("direct_path", [True, False])
def test_fast_backend_uses_the_tile_kernel_without_autograd(monkeypatch, direct_path):
    """Through the custom operator (run_tiles) or, by default, the direct inference path on the tile route."""
    calls = []
    kernel, forward = tile_kernel.run_tiles, direct.progression_forward
    monkeypatch.setattr(tile_kernel, "run_tiles", lambda *a, **kw: calls.append("op") or kernel(*a, **kw))

    def spy(*args):
        out = forward(*args)
        if out is not None:
            calls.append("direct")
        return out

    monkeypatch.setattr(direct, "progression_forward", spy)
    mask, shape = masks.window_mask(4), (8, 8)
    q, k, v = qkv(1, 2, 1 + 64, 8)
    with direct.direct_calls(direct_path):
        torch.testing.assert_close(masked_attention(q, k, v, mask, shape, 1, backend="fast"),
                                   reference(q, k, v, mask, shape, 1))
    assert calls == (["direct"] if direct_path else ["op"])
    assert direct.forward_plan(mask.key, shape, 1, "fused_tiles", q.dtype).route == ROUTE_TILES


def test_intermediate_memory_is_linear_in_tokens():
    """No score, tile or mask tensor: a call allocates its output, O(N), at two grid sizes."""
    mask = masks.window_mask(8)
    for side in (32, 64):
        q, k, v = qkv(1, 2, side * side, 16, dtype=torch.float32)
        tiles = progression_tiles(local_layout(mask, (side, side)), 0)
        with torch.no_grad():
            peak = peak_memory_bytes(lambda q=q, k=k, v=v, tiles=tiles: tile_attention(q, k, v, tiles))
        assert peak is not None and peak <= 1.5 * q.numel() * q.element_size(), (side, peak)


@pytest.mark.parametrize(("n", "block"), [(100, 16), (130, 64), (64, 8)])
def test_bitmap_tiles_match_the_token_mask(n, block):
    """PARO's block bitmap as tiles: runs of kept key blocks, a last partial block, query blocks with none."""
    from visattn.ops.engines.fused_tiles import bitmap_tiles
    from visattn.ops.paro_attention import bitmap_token_mask

    nb = -(-n // block)
    bitmap = torch.rand(nb, nb, generator=torch.Generator().manual_seed(n)) < 0.4
    bitmap[1] = False
    q, k, v = qkv(2, 1, n, 8)
    got = tile_attention(q, k, v, bitmap_tiles(bitmap.numpy(), block, n))
    allowed = bitmap_token_mask(bitmap[None], block, n)
    want = torch.nan_to_num(attention(q, k, v, mask=allowed))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("mask", "shape", "sizes"), [
    (masks.window_mask(16), (32, 48), (16, 16)),
    (masks.grid_mask(4), (8, 12), (4, 4)),
    (masks.axial_mask(1), (6, 100), (1, 100)),
    (masks.strip_mask("rows", 2), (6, 5), (2, 5)),
    (masks.window_mask(3), (6, 9, 3), (3, 3, 3)),
    (masks.halo_mask(4, 1), (8, 8), None),
    (masks.neighborhood_mask(3), (8, 8), None),
    (masks.axial_mask(1), (4, 300), None),
])
def test_disjoint_tile_sizes(mask, shape, sizes):
    """Training tiles: one window, grid cell or line each (at most 256 queries), their key sets disjoint; None for
    overlapping neighborhoods and halos and for lines too long."""
    layout = local_layout(mask, shape)
    assert disjoint_tile_sizes(layout) == sizes
    if sizes is not None:
        assert progression_tiles(layout, 0, sizes).keys_disjoint


def test_training_uses_the_disjoint_tiling(monkeypatch):
    seen = []
    kernel = tile_kernel.run_tiles
    monkeypatch.setattr(tile_kernel, "run_tiles", lambda *a: seen.append(a[3].tile_sizes) or kernel(*a))
    mask, shape = masks.window_mask(16), (32, 16)
    q, k, v = qkv(1, 2, 512, 8)
    with torch.no_grad(), direct.direct_calls(False):  # the operator's inference tiles, which the direct path shares
        masked_attention(q, k, v, mask, shape, backend="fast")
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = masked_attention(*leaves, mask, shape, backend="fast")
    assert seen[0] != (16, 16) and seen[1] == (16, 16)
    grad = torch.randn_like(out)
    for g, want in zip(gradients(out, leaves, grad), gradients(reference(*leaves, mask, shape), leaves, grad),
                       strict=True):
        torch.testing.assert_close(g, want)


@pytest.mark.parametrize("limit", ["GRADIENT_COPY_BYTES", "MAX_GRADIENT_COPIES"])
def test_training_falls_back_to_the_per_query_kernel_past_the_copy_limits(monkeypatch, limit):
    """Where the per-thread dK, dV copies would exceed the byte budget, or the backward would leave threads idle,
    the per-query kernel (no copies) trains."""
    calls = []
    forward = per_query.local_forward
    monkeypatch.setattr(tile_kernel, limit, 0)
    monkeypatch.setattr(per_query, "local_forward", lambda *a: calls.append(1) or forward(*a))
    mask, shape = masks.neighborhood_mask(5), (12, 12)
    leaves = [t.requires_grad_() for t in qkv(1, 2, 1 + 144, 8)]
    out = masked_attention(*leaves, mask, shape, 1, backend="fast")
    assert calls
    grad = torch.randn_like(out)
    for g, want in zip(gradients(out, leaves, grad), gradients(reference(*leaves, mask, shape, 1), leaves, grad),
                       strict=True):
        torch.testing.assert_close(g, want)
    monkeypatch.setattr(tile_kernel, "GRADIENT_COPY_BYTES", 1 << 30)
    monkeypatch.setattr(tile_kernel, "MAX_GRADIENT_COPIES", 8)
    calls.clear()
    masked_attention(*leaves, mask, shape, 1, backend="fast")
    assert not calls
