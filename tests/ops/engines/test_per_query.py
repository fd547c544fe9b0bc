"""The fused local kernel equals the naive dense reference on every progression mask, forward and backward."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import masks
from visattn._checks import Shape
from visattn.bench import peak_memory_bytes
from visattn.masks import AxisRule, SeparableMask
from visattn.ops import dispatch, local_attention, masked_attention
from visattn.ops.engines import availability, sdpa_tiles
from visattn.ops.engines.layout import axis_progression, local_layout, progression_table, transposed_progression
from visattn.ops.engines.sdpa_tiles import run_tile_plan
from visattn.ops.native import native_library
from visattn.testing import random_qkv as qkv

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(native_library("local_attention") is None, reason="no native kernel here"),
]


def reference(q, k, v, mask, shape, prefix=0):
    return masked_attention(q, k, v, mask, shape, prefix, backend="reference")


def assert_kernel_matches_reference(mask, shape, prefix=0, batch=2, heads=2, dim=4, contiguous=True, seed=0,
                                    tol=1e-10):
    q, k, v = qkv(batch, heads, prefix + math.prod(shape), dim, seed=seed, contiguous=contiguous)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = local_attention(*leaves, mask, tuple(shape), prefix)
    assert out is not None, "the kernel declined"
    expected = reference(q, k, v, mask, shape, prefix)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=out.dtype)
    got = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(reference(*ref_leaves, mask, shape, prefix), ref_leaves, grad)
    for name, g, w in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=tol * 10, atol=tol * 10, msg=lambda m, name=name: f"grad {name}: {m}")


@settings(max_examples=40, deadline=None)
@given(prefix=st.integers(0, 2), batch=st.integers(1, 2), dim=st.sampled_from([3, 8, 16]), contiguous=st.booleans(),
       data=st.data())
def test_neighborhood_matches_reference(neighborhood_cases, prefix, batch, dim, contiguous, data):
    mask, shape = data.draw(neighborhood_cases)
    assert_kernel_matches_reference(mask, shape, prefix, batch=batch, dim=dim, contiguous=contiguous)


@pytest.mark.parametrize(("mask", "shape"), [
    (masks.window_mask(3), (6, 9)),
    (masks.window_mask((2, 3)), (4, 9)),
    (masks.grid_mask(3), (6, 9)),
    (masks.halo_mask(4, 2), (8, 12)),
    (masks.halo_mask(3, 1), (9, 6)),
    (masks.axial_mask(0), (5, 7)),
    (masks.axial_mask(-1), (3, 4, 5)),
    (masks.strip_mask("rows", 2), (6, 5)),
    (masks.strip_mask("columns", 3), (4, 9)),
    (masks.sliding_window_mask(5), (17,)),
    (masks.sliding_window_mask(4, is_causal=True), (3, 5)),
])
@pytest.mark.parametrize("prefix", [0, 1])
def test_structured_masks_match_reference(mask, shape, prefix):
    assert_kernel_matches_reference(mask, shape, prefix, dim=8)


@pytest.mark.parametrize("dim", [7, 16, 32, 64])
def test_float32_within_stated_tolerance(dim):
    """float32: outputs within 2e-5 and gradients within 1e-4 of the float64 reference (unit-variance inputs,
    logits up to about 3 * sqrt(dim)); 16-key blocks and the tail both run at 49 keys."""
    mask, shape = masks.neighborhood_mask(7), (11, 13)
    q, k, v = qkv(2, 2, 1 + 143, dim, dtype=torch.float32, seed=3, scale=1.5)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = local_attention(*leaves, mask, shape, 1)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    expected = reference(*ref_leaves, mask, shape, 1)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(expected, ref_leaves, grad.double())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


def test_large_logits_stay_finite():
    """Logits of order 1e4: float64 stays exact; float32 stays finite, off only by the rounding of its logits
    (about 1e-3 absolute at this size, as any float32 attention)."""
    mask, shape = masks.neighborhood_mask(5), (9, 9)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-2)):
        q, k, v = qkv(1, 2, 81, 16, dtype=dtype, scale=30.0)
        out = local_attention(q, k, v, mask, shape)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), reference(q.double(), k.double(), v.double(), mask, shape),
                                   rtol=tol, atol=tol)


@dataclass(frozen=True)
class _EvenRowsAxis(AxisRule):
    """Odd coordinates see nothing; even ones see themselves and the next one (a progression found from the
    table, with empty rows)."""

    def allowed(self, xq, xk, length):
        return (xq % 2 == 0) & (xk >= xq) & (xk <= xq + 1)


@dataclass(frozen=True)
class _ScatterAxis(AxisRule):
    """Not a progression: a coordinate sees itself and the coordinates 1 and 3 after it."""

    def allowed(self, xq, xk, length):
        return (xk == xq) | (xk == xq + 1) | (xk == xq + 3)


@dataclass(frozen=True)
class _CustomMask(SeparableMask):
    rules: tuple[AxisRule, ...]

    def axis_rules(self, shape: Shape) -> tuple[AxisRule, ...]:
        return self.rules


def test_queries_that_see_no_key_give_zero_and_rules_without_closed_form_are_scanned():
    mask = _CustomMask((_EvenRowsAxis(), masks.NeighborhoodAxis(3)))
    assert_kernel_matches_reference(mask, (7, 5), dim=8)
    q, k, v = qkv(1, 1, 35, 8)
    out = local_attention(q, k, v, mask, (7, 5)).view(7, 5, 8)
    assert bool((out[1::2] == 0).all())


def test_masks_that_are_not_progressions_are_declined():
    mask = _CustomMask((_ScatterAxis(), masks.FullAxis()))
    assert local_layout(mask, (8, 3)) is None
    q, k, v = qkv(1, 1, 24, 4)
    assert local_attention(q, k, v, mask, (8, 3)) is None
    torch.testing.assert_close(masked_attention(q, k, v, mask, (8, 3)), reference(q, k, v, mask, (8, 3)))
    assert local_layout(masks.radial_mask("paper", block_size=4), (4, 16)) is None


def test_declines_dropout_other_dtypes_and_mixed_dtypes():
    mask, shape = masks.neighborhood_mask(3), (5, 5)
    q, k, v = qkv(1, 1, 25, 4, dtype=torch.float32)
    assert local_attention(q, k, v, mask, shape, dropout_p=0.1) is None
    assert local_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, shape) is None
    with pytest.raises(TypeError, match="share one dtype"):
        local_attention(q, k.double(), v, mask, shape)


def test_value_head_dim_of_its_own_and_empty_batch():
    q, k = qkv(2, 3, 1 + 35, 4)[:2]
    v = torch.randn(2, 3, 36, 6, dtype=torch.float64)
    mask = masks.neighborhood_mask(3)
    torch.testing.assert_close(local_attention(q, k, v, mask, (5, 7), 1), reference(q, k, v, mask, (5, 7), 1))
    empty = torch.randn(0, 3, 36, 4, dtype=torch.float64, requires_grad=True)
    out = local_attention(empty, empty, empty, mask, (5, 7), 1)
    out.sum().backward()
    assert out.shape == empty.grad.shape == (0, 3, 36, 4)


def test_gradcheck_small():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 1 + 18, 3, seed=5))
    mask = masks.neighborhood_mask((3, 3), dilation=(1, 2))
    assert torch.autograd.gradcheck(lambda a, b, c: local_attention(a, b, c, mask, (3, 6), 1), (q, k, v))


RULES = [masks.FullAxis(), masks.EqualAxis(), masks.BlockAxis(3), masks.GridAxis(4), masks.HaloAxis(4, 2),
         masks.SlidingAxis(5), masks.SlidingAxis(4, True), masks.SlidingAxis(6), masks.CausalAxis()]
RULES += [masks.NeighborhoodAxis(k, s, d, c) for k in (1, 2, 3, 4, 5) for d in (1, 2, 3) for s in (1, 2, 3)
          for c in (False, True) if s <= k]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_closed_form_progressions_equal_the_rule_tables(rule):
    for length in (12, 13, 16, 24):
        try:
            rule.check(length, 0)
        except ValueError:
            continue
        table = rule.table(length).numpy()
        progression = rule.progression(length)
        np.testing.assert_array_equal(progression_table(progression, length), table)
        np.testing.assert_array_equal(progression_table(axis_progression(table), length), table)
        np.testing.assert_array_equal(progression_table(transposed_progression(progression, length), length),
                                      table.T)


@pytest.fixture
def fresh_decisions():
    dispatch.clear_decisions()
    yield
    dispatch.clear_decisions()


def test_fast_backend_falls_back_to_tiles_without_the_kernels(monkeypatch, fresh_decisions):
    monkeypatch.setattr(availability, "kernels_ready", lambda name: False)
    mask, shape = masks.neighborhood_mask(3), (5, 6)
    q, k, v = qkv(1, 2, 30, 4)
    assert local_attention(q, k, v, mask, shape) is None
    calls = []
    monkeypatch.setattr(sdpa_tiles, "run_tile_plan", lambda *a, **kw: calls.append(1) or run_tile_plan(*a, **kw))
    torch.testing.assert_close(masked_attention(q, k, v, mask, shape, backend="fast"), reference(q, k, v, mask, shape))
    assert calls


def test_intermediate_memory_is_linear_in_tokens():
    """No score, tile or mask tensor: one call allocates its output and log-sum-exp, O(N), at two grid sizes."""
    mask = masks.neighborhood_mask(7)
    for side in (32, 64):
        q, k, v = qkv(1, 2, side * side, 16, dtype=torch.float32)
        with torch.no_grad():
            peak = peak_memory_bytes(lambda q=q, k=k, v=v, side=side: local_attention(q, k, v, mask, (side, side)))
        output_bytes = q.numel() * q.element_size()
        assert peak is not None and peak <= 1.5 * output_bytes, (side, peak, output_bytes)


def test_index_attention_matches_gathered_softmax():
    """Per-query key lists (Sparsifiner's top-k execution); a negative entry ends a list early."""
    from visattn.ops import index_attention

    gen = torch.Generator().manual_seed(0)
    for dim in (5, 16):
        q = torch.randn(2, 3, 11, dim, dtype=torch.float64, generator=gen)
        k, v = (torch.randn(2, 3, 20, dim, dtype=torch.float64, generator=gen) for _ in range(2))
        index = torch.rand(2, 3, 11, 20, generator=gen).topk(7, dim=-1)[1]
        index[0, 0, 0, 4:] = -1
        allowed = torch.zeros(2, 3, 11, 20, dtype=torch.bool)
        allowed.scatter_(-1, index.clamp(min=0), True)
        allowed[0, 0, 0] = False
        allowed[0, 0, 0, index[0, 0, 0, :4]] = True
        from visattn.ops import attention

        torch.testing.assert_close(index_attention(q, k, v, index), attention(q, k, v, mask=allowed),
                                   rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="index must be int64"):
        index_attention(q, k, v, index.int())
    assert index_attention(q.requires_grad_(), k, v, index) is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_index_attention_long_lists_end_anywhere(dtype):
    """Lists of 37 keys ended at every kind of position (first entry, inside and at the edge of the kernel's 8-entry
    scan blocks and 16-key vectors, not at all), and a list that ends and then continues (ignored)."""
    from visattn.ops import attention, index_attention

    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 7, 32, dtype=dtype, generator=gen)
    k, v = (torch.randn(1, 2, 50, 32, dtype=dtype, generator=gen) for _ in range(2))
    index = torch.rand(1, 2, 7, 50, generator=gen).topk(37, dim=-1)[1]
    lengths = [0, 5, 8, 16, 17, 33, 37]
    for row, length in enumerate(lengths):
        index[0, 0, row, length:] = -1
    index[0, 1, 2, 20:] = -1
    index[0, 1, 2, 30] = 3
    allowed = torch.zeros(1, 2, 7, 50, dtype=torch.bool)
    for h in range(2):
        for row in range(7):
            entries = index[0, h, row]
            end = int((entries < 0).nonzero()[0]) if bool((entries < 0).any()) else len(entries)
            allowed[0, h, row, entries[:end]] = True
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(index_attention(q, k, v, index), attention(q, k, v, mask=allowed), rtol=tol, atol=tol)
