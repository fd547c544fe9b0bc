"""Axial attention modules: every per-axis attention equals masked attention with ``axial_mask(axis)`` on the
naive dense reference (float64), summed as the module docstrings say; MORPH's space-time form; bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import masks
from visattn.nn import AxialAttention, LineAttention, MorphAxialAttention
from visattn.ops import masked_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def line_reference(line: LineAttention, x: torch.Tensor, axis: int) -> torch.Tensor:
    """``proj(masked_attention(q, k, v, axial_mask(axis)))`` on the flattened grid, dense reference backend."""
    b, *grid, c = x.shape
    n = math.prod(grid)
    qkv = line.qkv(x.reshape(b, n, c)).reshape(b, n, 3, line.num_heads, line.head_dim).permute(2, 0, 3, 1, 4)
    out = masked_attention(qkv[0], qkv[1], qkv[2], masks.axial_mask(axis), tuple(grid), backend="reference",
                           scale=line.scale)
    return line.proj(out.transpose(1, 2).reshape(b, n, c)).reshape(x.shape)


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return module.double().eval()


grids = st.one_of(
    st.tuples(st.integers(1, 7)),
    st.tuples(st.integers(1, 5), st.integers(1, 5)),
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4)),
)


@settings(max_examples=30, deadline=None)
@given(grid=grids, data=st.data(), batch=st.integers(1, 2), heads=st.sampled_from([1, 2, 4]))
def test_axial_attention_is_the_sum_of_masked_axial_attentions(grid, data, batch, heads):
    ndim = len(grid)
    axes = data.draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim,
                              unique_by=lambda a: a % ndim))
    module = seeded(AxialAttention(8, heads, axes=axes, qkv_bias=data.draw(st.booleans())))
    x = torch.randn(batch, *grid, 8, dtype=torch.float64)
    expected = sum(line_reference(line, x, a % ndim) for line, a in zip(module.lines, axes, strict=True))
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial", [(5,), (3, 4), (2, 3, 4), (1, 1, 6)])
@pytest.mark.parametrize("frames", [1, 3])
def test_morph_form(spatial, frames):
    """x' = x + A_t(x) when T > 1; out = x' + A_D(x') + A_H(x') + A_W(x'), spatial terms from the same x'."""
    module = seeded(MorphAxialAttention(8, 2, spatial_dims=len(spatial)))
    x = torch.randn(2, frames, *spatial, 8, dtype=torch.float64)
    x_t = x + line_reference(module.time, x, 0) if frames > 1 else x
    spatial_terms = [line_reference(line, x_t, a + 1) for a, line in enumerate(module.space.lines)]
    torch.testing.assert_close(module(x), x_t + sum(spatial_terms), rtol=1e-12, atol=1e-12)


def test_morph_matches_explicit_permutations():
    """MORPH's own layout steps (fold all but one axis into the batch, attend, unfold) on (B, T, D, H, W, C)."""
    module = seeded(MorphAxialAttention(8, 2))
    x = torch.randn(2, 3, 2, 3, 4, 8, dtype=torch.float64)

    def along(line, y, axis):
        moved = y.movedim(1 + axis, -2)
        lines = moved.reshape(-1, moved.shape[-2], 8)
        b, length, _ = lines.shape
        q, k, v = line.qkv(lines).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, length, 2, 4).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        out = line.proj((attn @ v).transpose(1, 2).reshape(b, length, 8))
        return out.reshape(moved.shape).movedim(-2, 1 + axis)

    x_t = x + along(module.time, x, 0)
    expected = x_t + sum(along(line, x_t, a) for a, line in zip((1, 2, 3), module.space.lines, strict=True))
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


def test_gradients():
    module = seeded(AxialAttention(4, 2, axes=(0, 1)))
    x = torch.randn(1, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))
    morph = seeded(MorphAxialAttention(4, 2, spatial_dims=1))
    y = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(morph, (y,))


def test_parameter_gradients_match_reference():
    module = seeded(AxialAttention(8, 2, axes=(1, 0)))
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    out = module(x)
    grads = torch.autograd.grad(out.square().sum(), list(module.parameters()))
    expected = line_reference(module.lines[0], x, 1) + line_reference(module.lines[1], x, 0)
    want = torch.autograd.grad(expected.square().sum(), list(module.parameters()))
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_time_attention_unused_for_one_frame():
    module = seeded(MorphAxialAttention(8, 2, spatial_dims=2))
    x = torch.randn(1, 1, 3, 3, 8, dtype=torch.float64)
    module(x).sum().backward()
    assert all(p.grad is None for p in module.time.parameters())
    assert all(p.grad is not None for p in module.space.parameters())


def test_bfloat16_and_dropout():
    module = AxialAttention(16, 4, axes=(0, 1))
    x = torch.randn(2, 6, 5, 16)
    expected = module(x)
    torch.testing.assert_close(module.bfloat16()(x.bfloat16()).float(), expected, rtol=5e-2, atol=5e-2)
    dropped = AxialAttention(16, 4, attn_drop=0.5).train()
    assert not torch.equal(dropped(x), dropped.eval()(x))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: AxialAttention(10, 3), ValueError, "divisible"),
        (lambda: AxialAttention(8, 0), ValueError, "num_heads"),
        (lambda: AxialAttention(8, 2, axes=()), TypeError, "axes"),
        (lambda: AxialAttention(8, 2, axes=(0.5,)), TypeError, "axes"),
        (lambda: MorphAxialAttention(10, 4), ValueError, "divisible"),
        (lambda: MorphAxialAttention(8, 2, spatial_dims=0), ValueError, "spatial_dims"),
        (lambda: LineAttention(8, 2, attn_drop=1.0), ValueError, "attn_drop"),
    ],
)
def test_bad_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_forward_input():
    x = torch.randn(2, 3, 4, 8)
    with pytest.raises(ValueError, match="axis 2"):
        AxialAttention(8, 2, axes=(0, 2))(x)
    with pytest.raises(ValueError, match="axis -3"):
        AxialAttention(8, 2, axes=-3)(x)
    with pytest.raises(ValueError, match="distinct"):
        AxialAttention(8, 2, axes=(1, -1))(x)
    with pytest.raises(ValueError, match="channels"):
        AxialAttention(6, 2)(x)
    with pytest.raises(ValueError, match="grid"):
        AxialAttention(8, 2)(torch.randn(2, 8))
    with pytest.raises(ValueError, match="axis"):
        LineAttention(8, 2)(x, 2)
    with pytest.raises(ValueError, match="spatial axes"):
        MorphAxialAttention(8, 2, spatial_dims=3)(x)


def test_scale_is_the_name_and_qk_scale_a_deprecated_alias():
    for build in (LineAttention, AxialAttention, MorphAxialAttention):
        assert build(8, 2, scale=0.3).state_dict().keys() == build(8, 2).state_dict().keys()
        with pytest.warns(DeprecationWarning, match="qk_scale is deprecated, use scale"):
            aliased = build(8, 2, qk_scale=0.3)
        lines = [m for m in aliased.modules() if isinstance(m, LineAttention)]
        assert lines and all(line.scale == 0.3 for line in lines)
        with pytest.raises(TypeError, match="pass scale or its deprecated alias qk_scale, not both"):
            build(8, 2, scale=0.3, qk_scale=0.3)
