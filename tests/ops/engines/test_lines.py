"""Axial attention over lines equals masked attention with ``axial_mask(axis)`` on the naive dense reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import masks
from visattn.ops import axial_attention, explain, masked_attention
from visattn.ops.engines.lines import from_lines, to_lines

pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(batch, heads, n, dim, dim_v=None, dtype=torch.float64, seed=0, contiguous=True):
    gen = torch.Generator().manual_seed(seed)
    dims = (dim, dim, dim_v or dim)
    if contiguous:
        return tuple(torch.randn(batch, heads, n, d, generator=gen, dtype=dtype) for d in dims)
    return tuple(torch.randn(batch, n, heads, d, generator=gen, dtype=dtype).transpose(1, 2) for d in dims)


def reference(q, k, v, axis, shape, prefix=0, scale=None):
    return masked_attention(q, k, v, masks.axial_mask(axis), shape, prefix, backend="reference", scale=scale)


grids = st.one_of(
    st.tuples(st.integers(1, 9)),
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
)


@settings(max_examples=40, deadline=None)
@given(shape=grids, data=st.data(), prefix=st.integers(0, 3), batch=st.integers(1, 2), heads=st.integers(1, 3),
       contiguous=st.booleans())
def test_equals_reference(shape, data, prefix, batch, heads, contiguous):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    q, k, v = qkv(batch, heads, prefix + math.prod(shape), 4, dim_v=3, contiguous=contiguous)
    expected = reference(q, k, v, axis, shape, prefix)
    torch.testing.assert_close(axial_attention(q, k, v, axis, shape, prefix), expected, rtol=1e-12, atol=1e-12)
    fast = masked_attention(q, k, v, masks.axial_mask(axis), shape, prefix, backend="fast")
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shape", "axis", "prefix"), [((5, 4), 0, 0), ((3, 2, 4), 1, 2), ((7,), 0, 1)])
def test_gradients_equal_reference(shape, axis, prefix):
    n = prefix + math.prod(shape)
    leaves = [t.requires_grad_() for t in qkv(2, 2, n, 3, seed=1)]
    out = axial_attention(*leaves, axis, shape, prefix, scale=0.7)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    expected = reference(*ref_leaves, axis, shape, prefix, scale=0.7)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    for name, got, want in zip("qkv", torch.autograd.grad(out, leaves, grad),
                               torch.autograd.grad(expected, ref_leaves, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"grad {name}: {m}")


def test_gradcheck():
    leaves = [t.requires_grad_() for t in qkv(1, 2, 1 + 3 * 4, 2, seed=3)]
    assert torch.autograd.gradcheck(lambda q, k, v: axial_attention(q, k, v, 1, (3, 4), 1), leaves)


def test_lines_round_trip():
    x = torch.arange(2 * 3 * 24 * 5, dtype=torch.float64).reshape(2, 3, 24, 5)
    for axis in range(3):
        lines = to_lines(x, (2, 3, 4), axis)
        assert lines.shape == (6, 24 // (2, 3, 4)[axis], (2, 3, 4)[axis], 5)
        assert torch.equal(from_lines(lines, 2, 3, (2, 3, 4), axis), x)


def test_auto_backend_uses_the_line_path_off_the_kernels():
    """Without the kernels (other devices), SDPA over the lines wins over the generic tiles for axial masks."""
    assert explain(masks.axial_mask(0), (6, 5), device="cuda").engine == "sdpa_lines"
    assert explain(masks.axial_mask(0), (6, 5), dtype=torch.bfloat16).engine == "sdpa_lines"
    q, k, v = qkv(1, 2, 6 * 5, 4, dtype=torch.float32)
    expected = masked_attention(q, k, v, masks.axial_mask(0), (6, 5), backend="dense")
    torch.testing.assert_close(masked_attention(q, k, v, masks.axial_mask(0), (6, 5)), expected,
                               rtol=1e-5, atol=1e-5)


def test_fast_path_runs_the_tile_kernel_with_and_without_autograd(monkeypatch):
    """The lines run as fused tiles, forward and (with autograd) backward; gradients equal the reference's."""
    from visattn.ops.engines import fused_tiles
    from visattn.ops.engines.direct import direct_calls

    calls = []
    kernel = fused_tiles.run_tiles
    monkeypatch.setattr(fused_tiles, "run_tiles", lambda *args: calls.append(args[3]) or kernel(*args))
    q, k, v = qkv(1, 2, 2 + 6 * 5, 4)
    with torch.no_grad(), direct_calls(False):  # through the operator (the direct path calls the kernel itself)
        through_op = masked_attention(q, k, v, masks.axial_mask(1), (6, 5), 2, backend="fast")
    assert len(calls) == 1
    with torch.no_grad():
        assert torch.equal(masked_attention(q, k, v, masks.axial_mask(1), (6, 5), 2, backend="fast"), through_op)
    assert len(calls) == 1
    leaves = [t.requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(masked_attention(*leaves, masks.axial_mask(1), (6, 5), 2, backend="fast").sum(), leaves)
    assert len(calls) == 2
    want = torch.autograd.grad(masked_attention(*leaves, masks.axial_mask(1), (6, 5), 2, backend="reference").sum(),
                               leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_float32_and_bfloat16_tolerances():
    """float32 within 1e-5 of the float64 reference at 4096 tokens; bfloat16 within 2e-2."""
    shape = (16, 16, 16)
    q, k, v = qkv(1, 2, math.prod(shape), 8, seed=4)
    expected = axial_attention(q, k, v, 1, shape)
    got32 = axial_attention(q.float(), k.float(), v.float(), 1, shape)
    torch.testing.assert_close(got32.double(), expected, rtol=1e-5, atol=1e-5)
    got16 = axial_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 1, shape)
    torch.testing.assert_close(got16.double(), expected, rtol=2e-2, atol=2e-2)


def test_bad_input():
    q, k, v = qkv(1, 1, 12, 4)
    with pytest.raises(ValueError, match="axis"):
        axial_attention(q, k, v, 2, (3, 4))
    with pytest.raises(ValueError, match="N=12"):
        axial_attention(q, k, v, 0, (3, 5))
    with pytest.raises(TypeError, match="axis"):
        axial_attention(q, k, v, 0.5, (3, 4))
    with pytest.raises(TypeError, match="dtype"):
        axial_attention(q, k.float(), v, 0, (3, 4))
