"""DaViT spatial window and channel group attention: timm parity, naive float64 formulas, gradients, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models import davit as timm_davit

import visattn
from visattn.nn import Attention, ChannelAttention, ChannelGroupMixer, ConvPosEnc, SpatialWindowAttention

FP32 = {"atol": 1e-5, "rtol": 1e-5}
FP64 = {"atol": 1e-10, "rtol": 1e-10}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return module.eval()


def naive_channel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """DaViT channel attention written out with indices: A[c, e] = softmax_e(s sum_n k[n, c] v[n, e]),
    out[n, c] = sum_e A[c, e] q[n, e]."""
    logits = torch.einsum("bhnc,bhne->bhce", k, v) * scale
    weights = torch.exp(logits - logits.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhce,bhne->bhnc", weights, q)


def naive_spatial(module: SpatialWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Dense float64 formula over the zero-padded map: token pairs in the same window attend with scale d^-1/2."""
    b, h, w, c = x.shape
    wh, ww = module.window_size
    hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    padded = torch.zeros(b, hp, wp, c, dtype=x.dtype)
    padded[:, :h, :w] = x
    ys, xs = torch.arange(hp).repeat_interleave(wp), torch.arange(wp).repeat(hp)
    same = ((ys[:, None] // wh) == (ys[None, :] // wh)) & ((xs[:, None] // ww) == (xs[None, :] // ww))
    heads, d = module.num_heads, c // module.num_heads
    q, k, v = module.qkv(padded.reshape(b, hp * wp, c)).reshape(b, hp * wp, 3, heads, d).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1) * d ** -0.5).masked_fill(~same, float("-inf"))
    out = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, hp, wp, c)
    return module.proj(out)[:, :h, :w]


# ---------------------------------------------------------------- timm parity


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_channel_attention_matches_timm(qkv_bias):
    theirs = randomize(timm_davit.ChannelAttention(24, 3, qkv_bias=qkv_bias))
    ours = ChannelAttention(24, 3, qkv_bias=qkv_bias)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 37, 24)
    torch.testing.assert_close(ours(x), theirs(x), **FP32)


def test_attention_with_channel_mixer_matches_timm():
    """The registry mixer inside visattn's Attention is DaViT's ChannelAttention given the same weights."""
    theirs = randomize(timm_davit.ChannelAttention(24, 4, qkv_bias=True))
    ours = Attention(24, 4, qkv_bias=True, mixer="channel")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 30, 24)
    torch.testing.assert_close(ours(x, shape=(5, 6)), theirs(x), **FP32)


@pytest.mark.parametrize("fused", [True, False])
def test_window_attention_matches_timm(fused):
    theirs = randomize(timm_davit.WindowAttention(24, (7, 7), 3))
    theirs.fused_attn = fused
    ours = SpatialWindowAttention(24, 3, 7)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    windows = torch.randn(5, 49, 24)
    torch.testing.assert_close(ours.attend_windows(windows), theirs(windows), **FP32)


@pytest.mark.parametrize("size", [(14, 7), (9, 11), (3, 5), (7, 16)])
def test_spatial_block_attention_path_matches_timm(size):
    """timm's SpatialBlock with its attention swapped for ours (same weights) gives the block's output."""
    block = randomize(timm_davit.SpatialBlock(24, 3, window_size=7))
    ours = SpatialWindowAttention(24, 3, 7)
    ours.load_state_dict(block.attn.state_dict())
    x = torch.randn(2, 24, *size)
    b, c, h, w = x.shape
    with torch.no_grad():
        shortcut = block.cpe1(x).flatten(2).transpose(1, 2)
        attn = ours(block.norm1(shortcut).reshape(b, h, w, c)).reshape(b, h * w, c)
        y = block.cpe2((shortcut + attn).transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        y = (y + block.mlp(block.norm2(y))).transpose(1, 2).reshape(b, c, h, w)
        torch.testing.assert_close(y, block(x), **FP32)


def test_channel_block_attention_path_matches_timm():
    block = randomize(timm_davit.ChannelBlock(24, 4, qkv_bias=True))
    ours = ChannelAttention(24, 4, qkv_bias=True)
    ours.load_state_dict(block.attn.state_dict())
    x = torch.randn(2, 24, 5, 9)
    b, c, h, w = x.shape
    with torch.no_grad():
        tokens = block.cpe1(x).flatten(2).transpose(1, 2)
        tokens = tokens + ours(block.norm1(tokens))
        y = block.cpe2(tokens.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        y = (y + block.mlp(block.norm2(y))).transpose(1, 2).reshape(b, c, h, w)
        torch.testing.assert_close(y, block(x), **FP32)


def test_conv_pos_enc_is_timms():
    assert ConvPosEnc is timm_davit.ConvPosEnc


# ---------------------------------------------------------------- float64 definitions


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 3), head_dim=st.integers(1, 6),
       shape=st.sampled_from([(7,), (3, 5), (2, 3, 2)]), prefix=st.integers(0, 2),
       scale=st.sampled_from([None, 0.7]))
def test_channel_mixer_equals_naive_float64(batch, heads, head_dim, shape, prefix, scale):
    mixer = visattn.create_mixer("channel", scale=scale)
    n = prefix + math.prod(shape)
    q, k, v = (torch.randn(batch, heads, n, head_dim, dtype=torch.float64) for _ in range(3))
    expected = naive_channel(q, k, v, head_dim ** -0.5 if scale is None else scale)
    torch.testing.assert_close(mixer(q, k, v, shape), expected, **FP64)


def test_channel_mixer_non_contiguous_inputs():
    qkv = torch.randn(2, 11, 3, 2, 4, dtype=torch.float64).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    assert not q.is_contiguous()
    torch.testing.assert_close(ChannelGroupMixer()(q, k, v, (11,)), naive_channel(q, k, v, 0.5), **FP64)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 10), w=st.integers(1, 10), wh=st.integers(1, 5), ww=st.integers(1, 5),
       heads=st.integers(1, 2))
def test_spatial_window_attention_equals_naive_float64(h, w, wh, ww, heads):
    module = randomize(SpatialWindowAttention(4 * heads, heads, (wh, ww)).double())
    x = torch.randn(2, h, w, 4 * heads, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), naive_spatial(module, x), **FP64)


def test_channel_mixer_is_linear_in_tokens():
    """O(N d^2): 2^16 tokens run without the 2^32-entry token-token matrix (16 GiB in float32) ever existing."""
    q, k, v = (torch.randn(1, 1, 65536, 4) for _ in range(3))
    out = visattn.create_mixer("channel")(q, k, v, (256, 256))
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert ChannelGroupMixer().channel_weights(k, v).shape == (1, 1, 4, 4)


def test_registry_entry():
    spec = visattn.registry.get_mixer_spec("channel")
    assert spec.paper.arxiv == "2204.03645"
    assert spec.complexity == "O(N d^2)"


# ---------------------------------------------------------------- gradients and dtypes


def test_gradcheck():
    q, k, v = (torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: ChannelGroupMixer()(q, k, v, (5,)), (q, k, v))
    spatial = randomize(SpatialWindowAttention(4, 2, (2, 3)).double())
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(spatial, (x,))
    channel = randomize(ChannelAttention(4, 2).double())
    x = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(channel, (x,))


def test_bfloat16_within_stated_tolerance():
    """bfloat16 (8-bit mantissa) agrees with float32 to 5% of the output's largest magnitude."""
    for module, x in ((randomize(SpatialWindowAttention(32, 4, 7)), torch.randn(2, 9, 12, 32)),
                      (randomize(ChannelAttention(32, 4)), torch.randn(2, 50, 32))):
        with torch.no_grad():
            expected = module(x)
            got = module.to(torch.bfloat16)(x.bfloat16()).float()
        assert (got - expected).abs().max() <= 0.05 * expected.abs().max()


def test_dropout_only_in_training():
    mixer = ChannelGroupMixer(attn_drop=0.5)
    q, k, v = (torch.randn(1, 2, 9, 4) for _ in range(3))
    torch.manual_seed(0)
    train = mixer(q, k, v, (9,))
    assert not torch.allclose(train, naive_channel(q, k, v, 0.5))
    torch.testing.assert_close(mixer.eval()(q, k, v, (9,)), naive_channel(q, k, v, 0.5))


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_naming_the_argument():
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        ChannelAttention(10, 4)
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        SpatialWindowAttention(10, 3)
    with pytest.raises(ValueError, match="window_size"):
        SpatialWindowAttention(8, 2, 0)
    with pytest.raises(ValueError, match=r"window_size=\(7, 7\) must divide the map \(H, W\)=\(5, 14\)"):
        SpatialWindowAttention(8, 2, 7, padding=False)(torch.randn(1, 5, 14, 8))
    with pytest.raises(ValueError, match=r"x must be shaped \(B, H, W, C=8\)"):
        SpatialWindowAttention(8, 2, 7)(torch.randn(1, 49, 8))
    with pytest.raises(ValueError, match=r"x must be shaped \(B, N, C=8\)"):
        ChannelAttention(8, 2)(torch.randn(1, 5, 6))
    mixer = ChannelGroupMixer()
    q = torch.randn(1, 2, 9, 4)
    with pytest.raises(ValueError, match="attn_mask is not supported"):
        mixer(q, q, q, (3, 3), attn_mask=torch.ones(9, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="one head_dim"):
        mixer(q, q, torch.randn(1, 2, 9, 3), (3, 3))
    with pytest.raises(ValueError, match=r"fewer than prod\(shape\)"):
        mixer(q, q, q, (4, 4))
    with pytest.raises(NotImplementedError, match="channel_weights"):
        mixer.attention_weights(q, q, (3, 3))
