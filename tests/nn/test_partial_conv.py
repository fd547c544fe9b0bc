"""FasterNet PConv and block: both forward forms against a naive shifted-sum convolution in float64; FLOPs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from visattn.nn import FasterNetBlock, PartialConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum over taps (di, dj) of weight[:, :, di, dj] applied to the zero-padded input shifted by (di, dj)."""
    k = weight.shape[-1]
    p = k // 2
    h, wd = x.shape[-2:]
    padded = torch.zeros(x.shape[0], x.shape[1], h + 2 * p, wd + 2 * p, dtype=x.dtype)
    padded[:, :, p:p + h, p:p + wd] = x
    out = 0
    for di in range(k):
        for dj in range(k):
            out = out + torch.einsum("oc,bchw->bohw", weight[:, :, di, dj], padded[:, :, di:di + h, dj:dj + wd])
    return out


def naive_pconv(m: PartialConv2d, x: torch.Tensor) -> torch.Tensor:
    cp = m.channels // m.n_div
    return torch.cat((naive_conv3x3(x[:, :cp], m.partial_conv3.weight), x[:, cp:]), dim=1)


@pytest.mark.parametrize("forward_type", ["split_cat", "slicing"])
@settings(max_examples=8, deadline=None)
@given(n_div=st.sampled_from([1, 2, 4]), per=st.integers(1, 3), h=st.integers(1, 6), wd=st.integers(1, 6),
       seed=st.integers(0, 99))
def test_pconv_matches_naive(forward_type, n_div, per, h, wd, seed):
    torch.manual_seed(seed)
    m = PartialConv2d(n_div * per, n_div, forward_type).double()
    x = torch.randn(2, n_div * per, h, wd, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_pconv(m, x), atol=1e-12, rtol=1e-12)


def test_forms_agree_with_gradients():
    a = PartialConv2d(8, 4, "split_cat").double()
    b = PartialConv2d(8, 4, "slicing").double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, atol=0, rtol=0)
    ga = torch.autograd.grad(ya.square().sum(), (x, a.partial_conv3.weight))
    gb = torch.autograd.grad(yb.square().sum(), (x, b.partial_conv3.weight))
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("forward_type", ["split_cat", "slicing"])
def test_gradcheck(forward_type):
    m = PartialConv2d(4, 2, forward_type).double()
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    w = m.partial_conv3.weight
    assert torch.autograd.gradcheck(lambda p: torch.func.functional_call(m, {"partial_conv3.weight": p},
                                                                         (x.detach(),)), (w,))


def test_flops_are_one_sixteenth_of_the_full_conv_at_n_div_4():
    c = 64
    x = torch.empty(1, c, 14, 14, device="meta")
    counts = []
    for module in (PartialConv2d(c, 4, device="meta"), torch.nn.Conv2d(c, c, 3, padding=1, bias=False,
                                                                         device="meta")):
        counter = FlopCounterMode(display=False)
        with counter:
            module(x)
        counts.append(counter.get_total_flops())
    assert counts[0] * 16 == counts[1]
    assert sum(p.numel() for p in PartialConv2d(c, 4).parameters()) == (c // 4) ** 2 * 9


def test_fasternet_block_matches_naive():
    torch.manual_seed(0)
    m = FasterNetBlock(8, n_div=4, mlp_ratio=2.0).double().eval()
    with torch.no_grad():
        bn = m.mlp[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    y = naive_pconv(m.spatial_mixing, x)
    hidden = torch.einsum("oc,bchw->bohw", m.mlp[0].weight[:, :, 0, 0], y)
    hidden = (hidden - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    hidden = hidden * bn.weight[:, None, None] + bn.bias[:, None, None]
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))
    expected = x + torch.einsum("oc,bchw->bohw", m.mlp[3].weight[:, :, 0, 0], hidden)
    torch.testing.assert_close(m(x), expected, atol=1e-12, rtol=1e-12)


def test_meta_device():
    for forward_type in ("split_cat", "slicing"):
        m = PartialConv2d(16, 4, forward_type, device="meta")
        assert m(torch.empty(2, 16, 5, 7, device="meta")).shape == (2, 16, 5, 7)
    assert FasterNetBlock(16, device="meta")(torch.empty(1, 16, 4, 4, device="meta")).shape == (1, 16, 4, 4)


def test_bad_input():
    with pytest.raises(ValueError, match="channels=10 must be divisible by n_div=4"):
        PartialConv2d(10, 4)
    with pytest.raises(ValueError, match="forward_type"):
        PartialConv2d(8, 4, "inplace")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        PartialConv2d(8, 4, kernel_size=2)
    with pytest.raises(ValueError, match="mlp_ratio"):
        FasterNetBlock(8, mlp_ratio=0)
    with pytest.raises(ValueError, match="x must be"):
        PartialConv2d(8, 4)(torch.randn(2, 4, 3, 3))
