"""RST's dynamic radial embedding (channels-first) against a naive bilinear deformable convolution in float64."""

from __future__ import annotations

import math

import pytest
import torch

from visattn.nn import RadialEmbedding2d
from visattn.testing import gradcheck_module

pytestmark = pytest.mark.usefixtures("one_thread")


def bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img (C, H, W) at real (y, x); corners outside the map count as zero."""
    h, w = img.shape[-2:]
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wy * wx * img[:, yy, xx]
    return out


def naive(m: RadialEmbedding2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) + sum_taps w[:, :, ki, kj] x(i - p + ki + dy, j - p + kj + dx), (dy, dx) = offset_conv(angle map)."""
    b, c, h, w = x.shape
    k, p = m.kernel_size, m.kernel_size // 2
    cy, cx = (h - 1) / 2, (w - 1) / 2
    theta = torch.tensor([[math.atan2(i - cy, j - cx) for j in range(w)] for i in range(h)], dtype=x.dtype)
    feats = torch.stack((torch.cos(theta), torch.sin(theta)))[None]
    with torch.no_grad():
        offsets = torch.nn.functional.conv2d(feats, m.offset_conv.weight, m.offset_conv.bias, padding=p)[0]
    out = torch.nn.functional.conv2d(x, m.conv.weight, m.conv.bias, padding=p)
    deformed = torch.zeros(b, m.out_channels, h, w, dtype=x.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                acc = torch.zeros(m.out_channels, dtype=x.dtype)
                for ki in range(k):
                    for kj in range(k):
                        t = ki * k + kj
                        y = i - p + ki + float(offsets[2 * t, i, j])
                        xx = j - p + kj + float(offsets[2 * t + 1, i, j])
                        acc = acc + m.deform_weight[:, :, ki, kj] @ bilinear(x[n], y, xx)
                deformed[n, :, i, j] = acc
    return out + deformed


@pytest.mark.parametrize(("c", "out", "h", "w"), [(2, None, 4, 5), (3, 5, 5, 3)])
def test_matches_naive_deformable_conv(c, out, h, w):
    m = RadialEmbedding2d(c, out).double()
    with torch.no_grad():
        m.offset_conv.weight.normal_(0, 0.6)
        m.offset_conv.bias.normal_(0, 0.6)
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive(m, x), atol=1e-10, rtol=1e-10)


def test_starts_as_a_plain_convolution_pair():
    m = RadialEmbedding2d(3).double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    plain = torch.nn.functional.conv2d(x, m.conv.weight, padding=1) + torch.nn.functional.conv2d(
        x, m.deform_weight, padding=1)
    torch.testing.assert_close(m(x), plain)


def test_gradcheck():
    m = RadialEmbedding2d(2).double()
    with torch.no_grad():
        m.offset_conv.weight.normal_(0, 0.3)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_meta_device_and_channels_first():
    m = RadialEmbedding2d(8, device="meta")
    assert m.conv.in_channels == m.conv.out_channels == 8
    assert m(torch.empty(2, 8, 6, 5, device="meta")).shape == (2, 8, 6, 5)


def test_bad_input():
    with pytest.raises(ValueError, match="channels"):
        RadialEmbedding2d(0)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        RadialEmbedding2d(4, kernel_size=2)
    with pytest.raises(ValueError, match="in_chans=4"):
        RadialEmbedding2d(4)(torch.randn(1, 3, 5, 5))
