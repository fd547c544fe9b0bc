"""S2LIC's ACGC context modules (visattn.nn.acgc) against naive float64 oracles: channel attention written as loops
over channel pairs, deformable attention with hand-written bilinear sampling and an explicit softmax."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.nn.acgc import (
    ChannelAttentionContext,
    DeformableGlobalContext,
    channel_attention,
    context_heads,
    reference_grid,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F32_ATOL = 1e-5
"""float32 against float64 on unit-scale inputs of these sizes."""


def naive_channel_attention(q, k, v, temperature):
    b, heads, c, _ = q.shape
    out = torch.zeros_like(v)
    for bi in range(b):
        for h in range(heads):
            for i in range(c):
                logits = torch.stack([torch.dot(q[bi, h, i], k[bi, h, j]) / (q[bi, h, i].norm() * k[bi, h, j].norm())
                                      * temperature[h, 0, 0] for j in range(c)])
                weights = torch.exp(logits - logits.max())
                weights = weights / weights.sum()
                out[bi, h, i] = sum(weights[j] * v[bi, h, j] for j in range(c))
    return out


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 2), heads=st.integers(1, 3), c=st.integers(1, 5), n=st.integers(1, 7),
       seed=st.integers(0, 2 ** 16))
def test_channel_attention_matches_naive_loops(b, heads, c, n, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, heads, c, n, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(heads, 1, 1, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(channel_attention(q, k, v, t), naive_channel_attention(q, k, v, t))


@torch.no_grad()
def naive_channel_context(module, x):
    """The block written out: LN over channels per position, q/k/v convolutions, attention, FFN, projection."""
    def layer_norm(t, norm):
        mean = t.mean(1, keepdim=True)
        var = ((t - mean) ** 2).mean(1, keepdim=True)
        return (t - mean) / torch.sqrt(var + norm.eps) * norm.weight[None, :, None, None] + norm.bias[None, :, None,
                                                                                                          None]
    b, c, h, w = x.shape
    heads = module.num_heads
    qkv = module.qkv_dw(module.qkv(layer_norm(x, module.norm1))).reshape(b, 3, heads, c // heads, h * w)
    attn = naive_channel_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], module.temperature)
    x = x + module.proj(attn.reshape(b, c, h, w))
    x = x + module.ffn(layer_norm(x, module.norm2))
    return module.out(x)


@pytest.mark.parametrize(("dim", "heads", "size"), [(6, 2, (3, 5)), (7, None, (4, 4)), (64, None, (2, 3))])
def test_channel_context_matches_oracle_float64(dim, heads, size):
    torch.manual_seed(0)
    module = ChannelAttentionContext(dim, 5, heads).double()
    with torch.no_grad():
        module.temperature.uniform_(0.5, 2.0)
    x = torch.randn(2, dim, *size, dtype=torch.float64)
    torch.testing.assert_close(module(x), naive_channel_context(module, x))
    assert module.num_heads == (heads or context_heads(dim))


def bilinear(x, px, py):
    """x (C, H, W) at pixel coordinates (px, py); zeros outside (grid_sample's padding_mode='zeros')."""
    c, h, w = x.shape
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(c, dtype=x.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wy * wx * x[:, yy, xx]
    return out


@torch.no_grad()
def naive_deformable_context(module, x):
    b, c, h, w = x.shape
    normed = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (c,), module.norm.weight, module.norm.bias,
                                            module.norm.eps).permute(0, 3, 1, 2)
    q = module.q(normed)
    raw = torch.tanh(module.offset(q))
    hk, wk = raw.shape[-2:]
    heads, d = module.num_heads, c // module.num_heads
    out = torch.zeros_like(x)
    for bi in range(b):
        samples = []
        for i in range(hk):
            for j in range(wk):
                gx = (2 * j + 1) / wk - 1 + raw[bi, 0, i, j] * 2 / wk * module.offset_range
                gy = (2 * i + 1) / hk - 1 + raw[bi, 1, i, j] * 2 / hk * module.offset_range
                px, py = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
                samples.append(bilinear(normed[bi], float(px), float(py)))
        s = torch.stack(samples, dim=1)[:, :, None]
        keys, values = module.k(s[None])[0, :, :, 0], module.v(s[None])[0, :, :, 0]
        for hh in range(heads):
            sl = slice(hh * d, (hh + 1) * d)
            for p in range(h * w):
                qp = q[bi, sl].reshape(d, -1)[:, p]
                logits = (keys[sl].T @ qp) / math.sqrt(d)
                weights = torch.softmax(logits, dim=0)
                out[bi, sl].view(d, -1)[:, p] = values[sl] @ weights
    return module.out(x + module.proj(out))


@pytest.mark.parametrize(("dim", "size", "stride", "trained_offsets"),
                         [(4, (5, 6), 2, True), (6, (4, 4), 1, True), (8, (3, 7), 3, False)])
def test_deformable_context_matches_oracle_float64(dim, size, stride, trained_offsets):
    torch.manual_seed(1)
    module = DeformableGlobalContext(dim, 3, num_heads=2, stride=stride).double()
    if trained_offsets:
        with torch.no_grad():
            module.offset[-1].weight.normal_(0, 1.0)
    x = torch.randn(2, dim, *size, dtype=torch.float64)
    torch.testing.assert_close(module(x), naive_deformable_context(module, x))


def test_untrained_offsets_sample_the_reference_grid():
    module = DeformableGlobalContext(4, 4, stride=2)
    q = torch.randn(1, 4, 6, 8)
    torch.testing.assert_close(module.sampling_points(q)[0], reference_grid((3, 4), torch.float32, q.device))


def test_float32_matches_float64():
    torch.manual_seed(2)
    for module in (ChannelAttentionContext(8, 4), DeformableGlobalContext(8, 4, stride=2)):
        x = torch.randn(2, 8, 5, 6)
        expected = module.double()(x.double())
        torch.testing.assert_close(module.float()(x), expected.float(), atol=F32_ATOL, rtol=1e-4)


@pytest.mark.parametrize("cls", [ChannelAttentionContext, DeformableGlobalContext])
def test_gradcheck(cls):
    torch.manual_seed(3)
    module = cls(4, 2, 2).double()
    if cls is DeformableGlobalContext:
        with torch.no_grad():
            module.offset[-1].weight.normal_(0, 0.3)
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cls", [ChannelAttentionContext, DeformableGlobalContext])
def test_meta_device(cls):
    with torch.device("meta"):
        module = cls(16, 8)
    out = module(torch.empty(2, 16, 5, 7, device="meta"))
    assert out.shape == (2, 8, 5, 7) and out.device.type == "meta"


@pytest.mark.parametrize("cls", [ChannelAttentionContext, DeformableGlobalContext])
def test_bad_arguments(cls):
    with pytest.raises(ValueError, match="num_heads"):
        cls(6, 2, num_heads=4)
    with pytest.raises(ValueError, match="dim"):
        cls(0, 2)
    module = cls(6, 2)
    with pytest.raises(ValueError, match=r"x must be shaped \(B, 6, H, W\)"):
        module(torch.randn(1, 5, 4, 4))


def test_context_heads_follow_the_release():
    assert [context_heads(32 * i) for i in range(1, 10)] == list(range(1, 10))
    assert context_heads(40) == 1 and context_heads(72) == 2 and context_heads(5) == 1
