"""PAT_ch, PAT_sp, PAT_sf (iRPE MHSA) and the PATNet block against naive float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch

from visattn.nn import PartialChannelAttention, PartialSelfAttention, PartialSpatialAttention, PATBlock
from visattn.nn.feature_maps import RelativePositionMHSA, euclidean_buckets
from visattn.testing import gradcheck_module, randomize_module

pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    return randomize_module(module, seed, scale=0.4)


def bn(z: torch.Tensor, m: torch.nn.BatchNorm2d) -> torch.Tensor:
    s = (None, slice(None), None, None)
    return (z - m.running_mean[s]) / torch.sqrt(m.running_var[s] + m.eps) * m.weight[s] + m.bias[s]


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    h, wd = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    return sum(torch.einsum("oc,bchw->bohw", weight[:, :, i, j], padded[:, :, i:i + h, j:j + wd])
               for i in range(3) for j in range(3))


def hardsigmoid(z: torch.Tensor) -> torch.Tensor:
    return torch.clamp(z / 6 + 0.5, 0, 1)


def naive_buckets(h: int, wd: int, ratio: float) -> torch.Tensor:
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    out = torch.empty(h * wd, h * wd, dtype=torch.long)
    for i in range(h * wd):
        for j in range(h * wd):
            d = round(math.hypot(i // wd - j // wd, i % wd - j % wd))
            if d <= alpha:
                idx = d
            else:
                idx = min(round(alpha + math.log(d / alpha) / math.log(gamma / alpha) * (beta - alpha)), beta)
            out[i, j] = int(idx) + int(beta)
    return out


@pytest.mark.parametrize(("h", "wd", "ratio"), [(3, 4, 1.0), (5, 2, 1.5), (9, 9, 2.0), (12, 13, 1.5)])
def test_buckets_match_the_piecewise_index(h, wd, ratio):
    torch.testing.assert_close(euclidean_buckets(h, wd, ratio), naive_buckets(h, wd, ratio))


def test_pat_ch_matches_naive():
    m = randomize(PartialChannelAttention(12, 4).double())
    x = torch.randn(2, 12, 5, 4, dtype=torch.float64)
    x1, x2 = x[:, :3], x[:, 3:]
    n = x2.shape[-1] * x2.shape[-2]
    mean = x2.mean(dim=(2, 3))
    std = torch.sqrt(((x2 - mean[..., None, None]) ** 2).sum(dim=(2, 3)) / (n - 1))
    wt = m.gate_conv.weight[:, :, 0, :]
    z = torch.einsum("oc,bc->bo", wt[..., 0], mean) + torch.einsum("oc,bc->bo", wt[..., 1], std)
    g = hardsigmoid(bn(z[..., None, None], m.gate_norm))
    expected = torch.cat((conv3x3(x1, m.partial_conv3.weight), bn(x2 * g, m.norm)), dim=1)
    torch.testing.assert_close(m(x), expected, atol=1e-12, rtol=1e-12)


def test_pat_sp_matches_naive():
    m = randomize(PartialSpatialAttention(7).double())
    x = torch.randn(2, 7, 4, 5, dtype=torch.float64)
    y1, y2 = x[:, :4], x[:, 4:]
    gate = hardsigmoid(torch.einsum("c,bchw->bhw", m.conv_attn.weight[0, :, 0, 0], y1))[:, None]
    expected = torch.cat((bn(y1 * gate, m.norm), torch.einsum("oc,bchw->bohw", m.conv.weight[:, :, 0, 0],
                                                               bn(y2, m.norm2))), dim=1)
    torch.testing.assert_close(m(x), expected, atol=1e-12, rtol=1e-12)


def naive_mhsa(m: RelativePositionMHSA, x: torch.Tensor) -> torch.Tensor:
    b, c, h, wd = x.shape
    heads, d = m.num_heads, c // m.num_heads
    t = x.flatten(2).transpose(1, 2)
    qkv = torch.einsum("oc,bnc->bno", m.qkv.weight, t)
    q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, h * wd, heads, d) for i in range(3))
    buckets = naive_buckets(h, wd, m.ratio)
    bias = torch.stack([m.rpe_bias[hd][buckets] for hd in range(heads)])
    logits = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d) + bias
    attn = torch.exp(logits - logits.amax(-1, keepdim=True))
    attn = attn / attn.sum(-1, keepdim=True)
    out = torch.einsum("bhij,bjhd->bihd", attn, v).reshape(b, h * wd, c)
    out = torch.einsum("oc,bnc->bno", m.proj.weight, out) + m.proj.bias
    return out.transpose(1, 2).reshape(b, c, h, wd)


def test_pat_sf_matches_naive():
    m = randomize(PartialSelfAttention(16, 4, num_heads=3).double())
    x = torch.randn(2, 16, 5, 4, dtype=torch.float64)
    x1, x2 = x[:, :4], x[:, 4:]
    mu = x2.mean(1, keepdim=True)
    var = ((x2 - mu) ** 2).mean(1, keepdim=True)
    normed = (x2 - mu) / torch.sqrt(var + m.norm.eps) * m.norm.weight[:, None, None] + m.norm.bias[:, None, None]
    expected = torch.cat((conv3x3(x1, m.partial_conv3.weight), naive_mhsa(m.attn, normed)), dim=1)
    torch.testing.assert_close(m(x), expected, atol=1e-12, rtol=1e-12)


def test_mhsa_bias_uses_far_buckets_on_large_maps():
    m = randomize(RelativePositionMHSA(4, 2, ratio=1.0).double())
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_mhsa(m, x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("mixer", ["channel", "self", "pconv"])
def test_block_residual_structure(mixer):
    blk = randomize(PATBlock(8, mixer, spatial_attn=True, num_heads=2).double())
    x = torch.randn(2, 8, 4, 3, dtype=torch.float64)
    if mixer == "self":
        y = x + blk.spatial_mixing(x)
        expected = y + blk.mlp(y)
    else:
        expected = x + blk.mlp(blk.spatial_mixing(x))
    torch.testing.assert_close(blk(x), expected, atol=0, rtol=0)
    assert isinstance(blk.mlp[-1], PartialSpatialAttention)


@pytest.mark.parametrize("cls", [PartialChannelAttention, PartialSpatialAttention, PartialSelfAttention])
def test_gradcheck(cls):
    kwargs = {"num_heads": 3} if cls is PartialSelfAttention else {}
    m = randomize(cls(4, **kwargs).double())
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_meta_device():
    x = torch.empty(2, 16, 5, 6, device="meta")
    for m in (PartialChannelAttention(16, device="meta"), PartialSpatialAttention(16, device="meta"),
              PartialSelfAttention(16, num_heads=4, device="meta"), PATBlock(16, "self", True, num_heads=4,
                                                                             device="meta")):
        assert m(x).shape == x.shape


def test_bad_input():
    with pytest.raises(ValueError, match="channels=10 must be divisible by n_div=4"):
        PartialChannelAttention(10)
    with pytest.raises(ValueError, match="channels=9 must be divisible by num_heads=6"):
        PartialSelfAttention(12, 4)
    with pytest.raises(ValueError, match="at least 2 pixels"):
        PartialChannelAttention(8)(torch.randn(2, 8, 1, 1))
    with pytest.raises(ValueError, match="mixer"):
        PATBlock(8, "spatial")
    with pytest.raises(ValueError, match="x must be"):
        PartialSpatialAttention(8)(torch.randn(1, 6, 2, 2))
