"""L2ViT enhanced linear attention and local concentration module: paper equations, clamp, temperature, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from oracles import naive_l2vit, seeded_qkv
from visattn.nn import Attention, L2ViTLinearMixer, LocalConcentrationModule
from visattn.ops.linear_attention import ROW_BLOCK

FP64 = {"atol": 1e-10, "rtol": 1e-10}


pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(b, h, n, d, seed=0, scale=1.0):
    return seeded_qkv(b, h, n, d, seed=seed, scale=scale)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(2, 3), h=st.integers(1, 3), n=st.integers(0, 15).map(lambda x: 2 * x + 1), d=st.integers(1, 8),
       scale=st.sampled_from([1.0, 4.0, 12.0]), seed=st.integers(0, 1000))
def test_enhanced_linear_attention_equals_the_paper_equation(b, h, n, d, scale, seed):
    q, k, v = qkv(b, h, n, d, seed, scale)
    mixer = L2ViTLinearMixer(h, d).double()
    with torch.no_grad():
        mixer.temperature.copy_(torch.rand(h, 1, 1, dtype=torch.float64) + 0.1)
    expected = naive_l2vit(q, k, v, mixer.temperature.detach())
    torch.testing.assert_close(mixer(q, k, v, n), expected, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n) @ v, expected, **FP64)


def test_more_tokens_than_one_row_block():
    n = ROW_BLOCK + 3
    q, k, v = qkv(1, 2, n, 3)
    mixer = L2ViTLinearMixer(2, 3).double()
    torch.testing.assert_close(mixer(q, k, v, n), naive_l2vit(q, k, v, mixer.temperature.detach()), **FP64)


def test_both_sides_of_the_clamp_are_exercised():
    q, k, v = qkv(2, 2, 31, 8, seed=1, scale=3.0)
    sums = (q.clamp_min(0) @ k.clamp_min(0).sum(2, keepdim=True).transpose(-2, -1)).squeeze(-1)
    assert (sums < 100).any() and (sums > 100).any()
    mixer = L2ViTLinearMixer(2, 8).double()
    torch.testing.assert_close(mixer(q, k, v, 31), naive_l2vit(q, k, v, mixer.temperature.detach()), **FP64)


def test_temperature_per_head_starts_at_inverse_sqrt_d_and_trains():
    mixer = L2ViTLinearMixer(num_heads=3, head_dim=16)
    assert mixer.temperature.shape == (3, 1, 1)
    torch.testing.assert_close(mixer.temperature.detach(), torch.full((3, 1, 1), 0.25))
    q, k, v = (t.float() for t in qkv(2, 3, 9, 16, scale=5.0))
    mixer(q, k, v, 9).sum().backward()
    assert mixer.temperature.grad.abs().min() > 0


def test_gradcheck():
    q, k, v = (t.requires_grad_() for t in qkv(2, 1, 5, 3, seed=2, scale=6.0))
    mixer = L2ViTLinearMixer(1, 3).double()
    assert torch.autograd.gradcheck(lambda q, k, v: mixer(q, k, v, 5), (q, k, v))


def naive_depthwise(x, weight, bias):
    """Depthwise convolution with zero padding as a sum over kernel offsets."""
    b, c, h, w = x.shape
    size = weight.shape[-1]
    r = size // 2
    padded = torch.zeros(b, c, h + 2 * r, w + 2 * r, dtype=x.dtype)
    padded[:, :, r:-r, r:-r] = x
    out = torch.zeros_like(x) + bias.reshape(1, c, 1, 1)
    for dy in range(size):
        for dx in range(size):
            out += padded[:, :, dy : dy + h, dx : dx + w] * weight[:, 0, dy, dx].reshape(1, c, 1, 1)
    return out


def test_local_concentration_module_equals_its_definition():
    torch.manual_seed(0)
    lcm = LocalConcentrationModule(6).double()
    with torch.no_grad():
        for p in lcm.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        lcm.bn.running_mean.copy_(torch.randn(6))
        lcm.bn.running_var.copy_(torch.rand(6) + 0.5)
    lcm.eval()
    x = torch.randn(2, 6, 5, 9, dtype=torch.float64)
    normed = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), lcm.norm.weight, lcm.norm.bias, 1e-5)
    y = naive_depthwise(normed.permute(0, 3, 1, 2), lcm.conv1.weight, lcm.conv1.bias)
    y = torch.nn.functional.gelu(y)
    bn = lcm.bn
    y = (y - bn.running_mean.reshape(1, 6, 1, 1)) / (bn.running_var.reshape(1, 6, 1, 1) + bn.eps).sqrt()
    y = y * bn.weight.reshape(1, 6, 1, 1) + bn.bias.reshape(1, 6, 1, 1)
    expected = x + naive_depthwise(y, lcm.conv2.weight, lcm.conv2.bias)
    torch.testing.assert_close(lcm(x), expected, **FP64)


def test_registry_entry_and_attention_module():
    spec = visattn.get_mixer_spec("l2vit_linear")
    assert spec.family == "reformulated" and spec.paper.arxiv == "2501.16182"
    layer = Attention(32, 4, mixer="l2vit_linear")
    assert layer.mixer.temperature.shape == (4, 1, 1)
    assert layer(torch.randn(2, 16, 32)).shape == (2, 16, 32)


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="min_denominator must be > 0, got 0"):
        L2ViTLinearMixer(min_denominator=0)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        L2ViTLinearMixer(num_heads=0)
    with pytest.raises(ValueError, match=r"attn_drop must be in \[0, 1\), got 1.0"):
        L2ViTLinearMixer(attn_drop=1.0)
    q, k, v = qkv(1, 2, 4, 3)
    with pytest.raises(ValueError, match="q must have heads=3"):
        L2ViTLinearMixer(3, 3).double()(q, k, v, 4)
    with pytest.raises(ValueError, match="attn_mask is not supported by L2ViTLinearMixer"):
        L2ViTLinearMixer(2, 3).double()(q, k, v, 4, attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must be shaped \(B, C=4, H, W\)"):
        LocalConcentrationModule(4)(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        LocalConcentrationModule(4, kernel_size=4)
