"""Polarized Self-Attention: the paper's equations and the released PSA_p / PSA_s against naive float64 einsums."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.nn import PolarizedSelfAttention

pytestmark = pytest.mark.usefixtures("one_thread")
FP32 = {"atol": 1e-5, "rtol": 1e-5}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module.eval()


def w(conv: torch.nn.Conv2d) -> torch.Tensor:
    return conv.weight[:, :, 0, 0]


def layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps) * weight + bias


def softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(z - z.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def naive_channel(m: PolarizedSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """A_ch, (B, C): sigmoid(LN(W_z (W_v X) softmax_HW(W_q X))) and the released forms."""
    xf = x.flatten(2)
    v = torch.einsum("oc,bcn->bon", w(m.conv_v_right), xf)
    q = softmax(torch.einsum("oc,bcn->bon", w(m.conv_q_right), xf)[:, 0], -1)
    ctx = torch.einsum("bon,bn->bo", v, q)
    if m.variant == "official" and m.mode == "sequential":
        c1, ln, _, c2 = m.conv_up
        hidden = torch.einsum("oc,bc->bo", w(c1), ctx) + c1.bias
        hidden = layer_norm(hidden, ln.weight.flatten(), ln.bias.flatten())
        z = torch.einsum("oc,bc->bo", w(c2), torch.clamp(hidden, min=0)) + c2.bias
    else:
        z = torch.einsum("oc,bc->bo", w(m.conv_up), ctx)
        if m.variant == "paper":
            z = layer_norm(z, m.norm.weight, m.norm.bias)
    return torch.sigmoid(z)


def naive_spatial(m: PolarizedSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """A_sp, (B, HW): sigmoid(softmax_C/2(GAP(W_q' X)) W_v' X) and the released forms."""
    xf = x.flatten(2)
    q = torch.einsum("oc,bcn->bon", w(m.conv_q_left), xf).mean(-1)
    v = torch.einsum("oc,bcn->bon", w(m.conv_v_left), xf)
    if m.variant == "paper":
        return torch.sigmoid(torch.einsum("bo,bon->bn", softmax(q, -1), v))
    if m.mode == "parallel":
        return torch.sigmoid(softmax(torch.einsum("bo,bon->bn", q, v), -1))
    return torch.sigmoid(torch.einsum("bo,bon->bn", q, softmax(v, -1)))


def naive_psa(m: PolarizedSelfAttention, x: torch.Tensor) -> torch.Tensor:
    b, c, h, wd = x.shape
    a_ch = naive_channel(m, x).reshape(b, c, 1, 1)
    if m.mode == "parallel":
        return a_ch * x + naive_spatial(m, x).reshape(b, 1, h, wd) * x
    z = a_ch * x
    return naive_spatial(m, z).reshape(b, 1, h, wd) * z


CASES = [("parallel", "paper"), ("sequential", "paper"), ("parallel", "official"), ("sequential", "official")]


@pytest.mark.parametrize(("mode", "variant"), CASES)
@settings(max_examples=6, deadline=None)
@given(channels=st.sampled_from([8, 10, 16]), h=st.integers(1, 6), wd=st.integers(1, 7), seed=st.integers(0, 99))
def test_matches_naive_float64(mode, variant, channels, h, wd, seed):
    m = randomize(PolarizedSelfAttention(channels, mode, variant).double(), seed)
    x = torch.randn(2, channels, h, wd, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(m(x), naive_psa(m, x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("mode", "variant"), CASES)
def test_float32_against_float64(mode, variant):
    m = randomize(PolarizedSelfAttention(16, mode, variant))
    x = torch.randn(2, 16, 5, 6)
    torch.testing.assert_close(m(x), naive_psa(m.double(), x.double()).float(), **FP32)


def test_paper_and_official_differ():
    x = torch.randn(1, 8, 4, 5)
    for mode in ("parallel", "sequential"):
        paper = randomize(PolarizedSelfAttention(8, mode, "paper"))
        official = randomize(PolarizedSelfAttention(8, mode, "official"))
        official.load_state_dict({k: v for k, v in paper.state_dict().items() if k in official.state_dict()},
                                 strict=False)
        assert not torch.allclose(paper(x), official(x))


@pytest.mark.parametrize(("mode", "variant"), CASES)
def test_gradcheck(mode, variant):
    m = randomize(PolarizedSelfAttention(8, mode, variant).double())
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    params = tuple(m.parameters())
    assert torch.autograd.gradcheck(lambda *p: torch.func.functional_call(
        m, dict(zip(dict(m.named_parameters()), p, strict=True)), (x.detach(),)), params)


def test_parameter_names_and_counts_follow_the_release():
    c = 16
    p = PolarizedSelfAttention(c, "parallel", "official")
    assert {k: tuple(v.shape) for k, v in p.state_dict().items()} == {
        "conv_q_right.weight": (1, c, 1, 1), "conv_v_right.weight": (c // 2, c, 1, 1),
        "conv_up.weight": (c, c // 2, 1, 1), "conv_q_left.weight": (c // 2, c, 1, 1),
        "conv_v_left.weight": (c // 2, c, 1, 1)}
    s = PolarizedSelfAttention(c, "sequential", "official")
    assert sorted(k for k in s.state_dict() if k.startswith("conv_up")) == [
        "conv_up.0.bias", "conv_up.0.weight", "conv_up.1.bias", "conv_up.1.weight", "conv_up.3.bias",
        "conv_up.3.weight"]
    assert s.conv_up[0].out_channels == c // 8
    paper = PolarizedSelfAttention(c)
    # W_v, W_q, W_z, W_q', W_v' plus the LayerNorm's 2C.
    assert sum(t.numel() for t in paper.parameters()) == c * c // 2 * 4 + c + 2 * c


def test_attention_maps_shapes_and_range():
    m = PolarizedSelfAttention(8)
    x = torch.randn(2, 8, 5, 3)
    a_ch, a_sp = m.channel_attention(x), m.spatial_attention(x)
    assert a_ch.shape == (2, 8, 1, 1) and a_sp.shape == (2, 1, 5, 3)
    assert bool(((a_ch > 0) & (a_ch < 1)).all()) and bool(((a_sp > 0) & (a_sp < 1)).all())


@pytest.mark.parametrize(("mode", "variant"), CASES)
def test_meta_device(mode, variant):
    m = PolarizedSelfAttention(16, mode, variant, device="meta")
    out = m(torch.empty(2, 16, 7, 5, device="meta"))
    assert out.shape == (2, 16, 7, 5) and out.device.type == "meta"


def test_bad_input():
    with pytest.raises(ValueError, match="channels"):
        PolarizedSelfAttention(7)
    with pytest.raises(ValueError, match="mode"):
        PolarizedSelfAttention(8, mode="both")
    with pytest.raises(ValueError, match="variant"):
        PolarizedSelfAttention(8, variant="released")
    with pytest.raises(ValueError, match="channels must be >= 8"):
        PolarizedSelfAttention(6, "sequential", "official")
    with pytest.raises(TypeError, match="channels"):
        PolarizedSelfAttention(8.0)
    with pytest.raises(ValueError, match="x must be"):
        PolarizedSelfAttention(8)(torch.randn(1, 6, 3, 3))
