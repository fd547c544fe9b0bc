"""RTNet HybridBlock against a naive float64 version: pixel loops for the tanh-polar <-> tanh-Cartesian warps of the
RoI and for the mixed (circular over angle, replicate over radius) padding."""

from __future__ import annotations

import math

import pytest
import torch

from visattn.nn import HybridBlock
from visattn.nn.feature_maps import MixedPad2d
from visattn.testing import randomize_module

pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    return randomize_module(module, seed)


def polar_to_cart(img: torch.Tensor, box_w: float, box_h: float) -> torch.Tensor:
    """Every tanh-Cartesian pixel reads the polar map (rows = angle, wrapped; columns = radius, zero past the rim)."""
    c, ht, wt = img.shape
    out = torch.zeros_like(img)
    rx, ry = box_w / math.sqrt(math.pi), box_h / math.sqrt(math.pi)
    for i in range(ht):
        for l in range(wt):
            dx = box_w / 2 * math.atanh(-1 + (2 * l + 1) / wt)
            dy = box_h / 2 * math.atanh(-1 + (2 * i + 1) / ht)
            rho = math.sqrt(ry**2 * dx**2 + rx**2 * dy**2) / (rx * ry)
            col = math.tanh(rho) * wt
            row = (math.atan2(dy, dx) / (2 * math.pi)) % 1.0 * ht
            r0, c0 = math.floor(row), math.floor(col)
            for rr, wr in ((r0, 1 - (row - r0)), (r0 + 1, row - r0)):
                for cc, wc in ((c0, 1 - (col - c0)), (c0 + 1, col - c0)):
                    if 0 <= cc < wt:
                        out[:, i, l] += wr * wc * img[:, rr % ht, cc]
    return out


def cart_to_polar(img: torch.Tensor, box_w: float, box_h: float) -> torch.Tensor:
    """Every tanh-polar pixel (angle 2 pi j / H, u = k / W) reads the tanh-Cartesian map, zeros outside."""
    c, ny, nx = img.shape
    out = torch.zeros_like(img)
    rx, ry = box_w / math.sqrt(math.pi), box_h / math.sqrt(math.pi)
    for j in range(ny):
        for k in range(nx):
            theta = 2 * math.pi * j / ny
            rho = math.atanh(k / nx) * rx * ry / math.sqrt(ry**2 * math.cos(theta) ** 2 + rx**2 * math.sin(theta) ** 2)
            ix = (math.tanh(rho * math.cos(theta) / (box_w / 2)) + 1) * nx / 2 - 0.5
            iy = (math.tanh(rho * math.sin(theta) / (box_h / 2)) + 1) * ny / 2 - 0.5
            y0, x0 = math.floor(iy), math.floor(ix)
            for yy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
                for xx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
                    if 0 <= yy < ny and 0 <= xx < nx:
                        out[:, j, k] += wy * wx * img[:, yy, xx]
    return out


def mixed_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    rows = torch.tensor([(i - p) % h for i in range(h + 2 * p)])
    cols = torch.tensor([min(max(j - p, 0), w - 1) for j in range(w + 2 * p)])
    return x[..., rows, :][..., cols]


def conv3x3_valid(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2] - 2, x.shape[-1] - 2
    return sum(torch.einsum("oc,bchw->bohw", weight[:, :, i, j], x[:, :, i:i + h, j:j + w])
               for i in range(3) for j in range(3))


def bn(z: torch.Tensor, m: torch.nn.BatchNorm2d) -> torch.Tensor:
    s = (None, slice(None), None, None)
    return (z - m.running_mean[s]) / torch.sqrt(m.running_var[s] + m.eps) * m.weight[s] + m.bias[s]


def pw(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)


def naive_block(m: HybridBlock, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    a = torch.relu(bn(pw(x, m.conv1_a), m.bn1_a))
    b = torch.relu(bn(pw(x, m.conv1_b), m.bn1_b))
    a = torch.relu(bn(conv3x3_valid(mixed_pad(a, 1), m.conv_polar[1].weight), m.conv_polar[2]))
    sizes = [(float(r[2] - r[0]), float(r[3] - r[1])) for r in rois]
    b = torch.stack([polar_to_cart(b[n], *sizes[n]) for n in range(len(b))])
    b = bn(conv3x3_valid(torch.nn.functional.pad(b, (1, 1, 1, 1)), m.conv_cart[0].weight), m.conv_cart[1])
    b = torch.stack([cart_to_polar(b[n], *sizes[n]) for n in range(len(b))])
    out = bn(pw(torch.cat((a, torch.relu(b)), 1), m.conv3), m.bn3)
    return torch.relu(out + x)


def test_mixed_padding_matches_index_arithmetic():
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(MixedPad2d(2)(x), mixed_pad(x, 2), atol=0, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(6, 5), (5, 7)])
def test_matches_naive_float64(h, w):
    m = randomize(HybridBlock(8, 2).double())
    x = torch.randn(2, 8, h, w, dtype=torch.float64)
    rois = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 30.0, 20.0]], dtype=torch.float64)
    torch.testing.assert_close(m(x, rois), naive_block(m, x, rois), atol=1e-10, rtol=1e-10)


def test_only_the_box_size_matters():
    m = randomize(HybridBlock(8, 2).double())
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    a = m(x, torch.tensor([[0.0, 0.0, 40.0, 60.0]], dtype=torch.float64))
    b = m(x, torch.tensor([[100.0, 7.0, 120.0, 37.0]], dtype=torch.float64))
    torch.testing.assert_close(a, b)


def test_non_hybrid_stage_stays_polar():
    m = randomize(HybridBlock(8, 2, hybrid=False).double())
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    b = torch.relu(bn(pw(x, m.conv1_b), m.bn1_b))
    b = torch.relu(bn(conv3x3_valid(torch.nn.functional.pad(b, (1, 1, 1, 1)), m.conv_cart[0].weight), m.conv_cart[1]))
    a = torch.relu(bn(pw(x, m.conv1_a), m.bn1_a))
    a = torch.relu(bn(conv3x3_valid(mixed_pad(a, 1), m.conv_polar[1].weight), m.conv_polar[2]))
    expected = torch.relu(bn(pw(torch.cat((a, b), 1), m.conv3), m.bn3) + x)
    torch.testing.assert_close(m(x, torch.tensor([[0.0, 0.0, 9.0, 9.0]])), expected)


def test_gradcheck():
    m = randomize(HybridBlock(8, 2).double())
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0.0, 30.0, 40.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: m(t, rois), (x,))


def test_meta_device():
    m = HybridBlock(16, 4, device="meta")
    out = m(torch.empty(2, 16, 8, 8, device="meta"), torch.empty(2, 4, device="meta"))
    assert out.shape == (2, 16, 8, 8)


def test_bad_input():
    with pytest.raises(ValueError, match="downsample is required"):
        HybridBlock(8, 4)
    with pytest.raises(ValueError, match="planes"):
        HybridBlock(4, 1)
    with pytest.raises(ValueError, match="x must be"):
        HybridBlock(8, 2)(torch.randn(1, 4, 5, 5), torch.zeros(1, 4))
