"""ComplexFormer complex multi-head attention (arXiv 2505.10222): the materialising formula, unscaled RoPE at
delta = 1 and b = 0, no (B, H, N, N, d/2) intermediate, masks, gradients and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from oracles import naive_scores
from probes import LargestTensor, check_causal
from visattn.nn import Attention, ComplexAttentionMixer

FP64 = {"atol": 1e-10, "rtol": 1e-10}


def naive_attention(q, k, v, delta, bias, mask=None, eps=1e-9):
    scores = naive_scores(q, k, delta, bias, eps=eps)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, dim=-1) @ v


def rotate_half_rope(x):
    """Standard RoPE (rotate-half pairing, positions 0..N-1, base 10000) applied to (B, H, N, d)."""
    n, d = x.shape[-2], x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=x.dtype) / d)
    ang = torch.arange(n, dtype=x.dtype)[:, None] * inv
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat((-x2, x1), -1) * sin


def setup(b=2, h=3, n=9, d=8, seed=0, bias_scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    mixer = ComplexAttentionMixer(h, d).double()
    with torch.no_grad():
        mixer.delta.copy_(torch.randn(h, d // 2, generator=gen, dtype=torch.float64))
        mixer.bias.copy_(torch.randn(h, d // 2, generator=gen, dtype=torch.float64) * bias_scale)
    q, k, v = torch.randn(3, b, h, n, d, generator=gen, dtype=torch.float64).unbind(0)
    return mixer, q, k, v


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 12).map(lambda x: 2 * x + 1), half=st.integers(1, 6), heads=st.integers(1, 3),
       is_causal=st.booleans(), seed=st.integers(0, 10_000))
def test_equals_materialising_formula(n, half, heads, is_causal, seed):
    mixer, q, k, v = setup(2, heads, n, 2 * half, seed)
    mixer.is_causal = is_causal
    mask = torch.ones(n, n, dtype=torch.bool).tril() if is_causal else None
    expected = naive_attention(q, k, v, mixer.delta.detach(), mixer.bias.detach(), mask)
    torch.testing.assert_close(mixer(q, k, v, n), expected, **FP64)
    scores = naive_scores(q, k, mixer.delta.detach(), mixer.bias.detach())
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(mixer.attention_weights(q, k, n), weights, **FP64)


def test_delta_one_bias_zero_is_unscaled_rope_attention():
    mixer, q, k, v = setup(2, 4, 17, 16, seed=1)
    mixer.eps = 0.0
    with torch.no_grad():
        mixer.delta.fill_(1.0)
        mixer.bias.zero_()
    scores = rotate_half_rope(q) @ rotate_half_rope(k).transpose(-2, -1)
    torch.testing.assert_close(mixer(q, k, v, 17), torch.softmax(scores, -1) @ v, **FP64)
    mixer.eps = 1e-9
    torch.testing.assert_close(mixer(q, k, v, 17), torch.softmax(scores, -1) @ v, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("backward", [False, True])
def test_no_tensor_of_size_n_n_half_d_is_created(backward):
    b, h, n, d = 1, 2, 64, 32
    mixer, q, k, v = setup(b, h, n, d, seed=2)
    forbidden = b * h * n * n * (d // 2)
    with LargestTensor() as probe:
        naive_scores(q, k, mixer.delta.detach(), mixer.bias.detach())
    assert probe.largest >= forbidden
    q.requires_grad_()
    with LargestTensor() as probe:
        out = mixer(q, k, v, n)
        if backward:
            out.sum().backward()
    assert probe.largest <= 2 * b * h * n * n < forbidden


def test_attn_masks_bool_and_additive():
    mixer, q, k, v = setup(2, 2, 11, 6, seed=3)
    gen = torch.Generator().manual_seed(4)
    allowed = torch.rand(2, 1, 11, 11, generator=gen) > 0.3
    allowed[..., torch.arange(11), torch.arange(11)] = True
    additive = torch.randn(11, 11, generator=gen, dtype=torch.float64)
    delta, bias = mixer.delta.detach(), mixer.bias.detach()
    torch.testing.assert_close(mixer(q, k, v, 11, attn_mask=allowed), naive_attention(q, k, v, delta, bias, allowed),
                               **FP64)
    torch.testing.assert_close(mixer(q, k, v, 11, attn_mask=additive),
                               naive_attention(q, k, v, delta, bias, additive), **FP64)
    mixer.is_causal = True
    causal = torch.ones(11, 11, dtype=torch.bool).tril()
    torch.testing.assert_close(mixer(q, k, v, 11, attn_mask=allowed),
                               naive_attention(q, k, v, delta, bias, allowed & causal), **FP64)


def test_causal_never_sees_a_later_token():
    mixer, q, k, v = setup(1, 2, 15, 8, seed=5)
    mixer.is_causal = True
    check_causal(lambda a, b, c: mixer(a, b, c, 15), q, k, v, 9)


def test_gradients_match_the_materialising_formula():
    mixer, q, k, v = setup(1, 2, 5, 4, seed=6)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: mixer(a, b, c, 5), inputs)
    weight = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    (mixer(q, k, v, 5) * weight).sum().backward()
    ours = [t.grad.clone() for t in (q, k, v, mixer.delta, mixer.bias)]
    delta = mixer.delta.detach().clone().requires_grad_()
    bias = mixer.bias.detach().clone().requires_grad_()
    for t in (q, k, v):
        t.grad = None
    (naive_attention(q, k, v, delta, bias) * weight).sum().backward()
    for got, expected in zip(ours, (q.grad, k.grad, v.grad, delta.grad, bias.grad), strict=True):
        torch.testing.assert_close(got, expected, **FP64)


def test_initialisation_and_layer_integration():
    torch.manual_seed(0)
    mixer = visattn.create_mixer_for_layer("complexformer", dim=512, num_heads=8, head_dim=64)
    assert mixer.delta.shape == (8, 32) and (mixer.bias == 0).all()
    assert abs(mixer.delta.std().item() - 32 ** -0.5) < 0.03
    layer = Attention(48, num_heads=4, mixer="complexformer", num_prefix_tokens=1)
    x = torch.randn(2, 1 + 9, 48, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all() and layer.mixer.delta.grad is not None


def test_float32_close_to_float64():
    mixer, q, k, v = setup(2, 2, 33, 16, seed=7)
    expected = mixer(q, k, v, 33)
    got = mixer.float()(q.float(), k.float(), v.float(), 33)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=2e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="head_dim must be even"):
        visattn.create_mixer("complexformer", head_dim=7)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        ComplexAttentionMixer(num_heads=0)
    with pytest.raises(ValueError, match="base must be a positive number"):
        ComplexAttentionMixer(base=-1.0)
    mixer, q, k, v = setup(1, 3, 5, 8)
    with pytest.raises(ValueError, match=r"num_heads=3, N, head_dim=8"):
        mixer(q[:, :2], k[:, :2], v[:, :2], 5)
    with pytest.raises(ValueError, match="does not broadcast"):
        mixer(q, k, v, 5, attn_mask=torch.ones(4, 4, dtype=torch.bool))
