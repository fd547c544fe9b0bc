"""Log-polar foveation (Foveated Retinotopy, arXiv 2402.15480): naive definition, rotation = column roll, zoom by the
ring ratio = row shift, inverse by radius band, gradients, meta device, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.transforms import LogPolarFoveation, inverse_log_polar, log_polar, log_polar_grid, ring_ratio

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_log_polar(img, rings, angles, fixation, r_min_exp, r_max_exp, theta0, radius, bilinear):
    """The paper's grid written out sample by sample, read with a naive bilinear (align_corners=False)."""
    height, width = img.shape[-2:]
    out = torch.zeros(img.shape[0], img.shape[1], rings, angles, dtype=img.dtype)
    for i in range(rings):
        r = radius * 2 ** (r_max_exp + (r_min_exp - r_max_exp) * i / (rings - 1))
        for j in range(angles):
            t = theta0 + 2 * math.pi * j / angles
            gx, gy = fixation[0] + r * math.cos(t), fixation[1] + r * math.sin(t)
            out[..., i, j] = bilinear(img, ((gy + 1) * height - 1) / 2, ((gx + 1) * width - 1) / 2)
    return out


@settings(max_examples=20, deadline=None)
@given(h=st.integers(3, 12), w=st.integers(3, 12), rings=st.integers(2, 6), angles=st.integers(1, 7),
       fx=st.floats(-0.8, 0.8), fy=st.floats(-0.8, 0.8), lo=st.floats(-4, -0.5), radius=st.floats(0.2, 1.5))
def test_log_polar_matches_the_naive_grid(h, w, rings, angles, fx, fy, lo, radius, bilinear):
    img = torch.randn(2, 2, h, w, dtype=torch.float64)
    out = log_polar(img, (rings, angles), (fx, fy), r_min_exp=lo, radius=radius)
    ref = naive_log_polar(img, rings, angles, (fx, fy), lo, 0.0, -math.pi / 4, radius, bilinear)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_float32_matches_float64():
    img = torch.randn(2, 3, 17, 23, dtype=torch.float64)
    fix = torch.tensor([[0.1, -0.2], [-0.3, 0.25]], dtype=torch.float64)
    ref = log_polar(img, (9, 16), fix)
    # float32 grid coordinates carry ~1e-7 relative error; the bilinear read turns it into < 1e-5 here
    torch.testing.assert_close(log_polar(img.float(), (9, 16), fix.float()).double(), ref, rtol=0, atol=1e-5)


def test_rot90_is_an_exact_column_roll():
    # a quarter turn of a square image about its centre is exact on the pixel grid: rot90 rolls the columns by -A/4
    img = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    p = log_polar(img, (10, 24))
    turned = log_polar(torch.rot90(img, 1, dims=(-2, -1)), (10, 24))
    torch.testing.assert_close(turned, torch.roll(p, -6, dims=-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("fixation", [(0.0, 0.0), (0.15, -0.1)])
def test_rotation_about_the_fixation_rolls_the_columns(fixation, smooth_image):
    rings, angles, k = 12, 24, 5
    phi = 2 * math.pi * k / angles
    fx, fy = fixation
    img = smooth_image(64, 64)

    def fn(x, y):  # the image rotated by +phi about the fixation: new(q) = old(f + R(-phi)(q - f))
        dx, dy = x - fx, y - fy
        return _fn(fx + dx * math.cos(phi) + dy * math.sin(phi), fy - dx * math.sin(phi) + dy * math.cos(phi))

    turned = smooth_image(64, 64, fn)
    kw = dict(fixation=fixation, radius=0.7)
    err = (log_polar(turned, (rings, angles), **kw) - torch.roll(log_polar(img, (rings, angles), **kw), k, -1)).abs()
    # measured max error 1.0e-3 (bilinear interpolation of a smooth 64 x 64 image); exact for the continuous image
    assert err.max() < 2e-3, err.amax(dim=(0, 1, 3))


def test_zoom_by_the_ring_ratio_shifts_the_rows(smooth_image):
    rings, angles = 16, 24
    s = ring_ratio(rings)
    assert s == pytest.approx(2 ** (7.5 / 15))
    img = smooth_image(64, 64)
    zoomed = smooth_image(64, 64, lambda x, y: _fn(x / s, y / s))
    err = (log_polar(zoomed, (rings, angles))[..., :-1, :] - log_polar(img, (rings, angles))[..., 1:, :]).abs()
    per_ring = err.amax(dim=(0, 1, 3))
    # ring 0 (radius 1) reaches the border of the image, where zero padding blends in: excluded. The others:
    # measured max 1.0e-3 on a 64 x 64 image (bilinear interpolation error), exact for the continuous image.
    assert per_ring[1:].max() < 2e-3, per_ring
    assert per_ring[0] > 1e-2  # the test can tell a mismatch: the border ring differs


def _fn(x, y):
    return torch.sin(2.1 * x + 0.3) * torch.cos(1.7 * y - 0.2) + 0.5 * torch.exp(-3 * ((x - 0.2) ** 2 + (y + 0.1) ** 2))


def test_inverse_round_trip_by_radius_band(smooth_image):
    img = smooth_image(64, 64)
    fix = (0.1, -0.05)
    p = log_polar(img, (96, 192), fix, r_min_exp=-6.0, radius=0.8)
    back = inverse_log_polar(p, (64, 64), fix, r_min_exp=-6.0, radius=0.8)
    ys = (2 * torch.arange(64, dtype=torch.float64) + 1) / 64 - 1
    yy, xx = torch.meshgrid(ys, ys, indexing="ij")
    rho = torch.sqrt((xx - fix[0]) ** 2 + (yy - fix[1]) ** 2) / 0.8
    err = (back - img).abs()[0, 0]
    # measured max errors per band: rho < 0.25: 4.8e-3 (fine rings, coarse pixels), 0.25-0.5: 1.1e-3, 0.5-0.95:
    # 1.4e-3 (two bilinear reads of a smooth 64 x 64 image)
    for lo, hi in ((0, 0.25), (0.25, 0.5), (0.5, 0.95)):
        band = (rho >= lo) & (rho < hi)
        assert err[band].max() < 1e-2, (lo, hi, err[band].max())
    assert (back[0, 0][rho > 1.0] == 0).all()


def test_grid_shape_and_values():
    g = log_polar_grid((4, 8), r_min_exp=-3, r_max_exp=0, theta0=0.0, dtype=torch.float64)
    assert g.shape == (4, 8, 2)
    torch.testing.assert_close(g[:, 0, 0], torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=torch.float64))
    torch.testing.assert_close(g[0, 2], torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-15, rtol=0)


def test_gradients_in_image_and_fixation():
    img = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    fix = torch.tensor([[0.13, -0.21]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, f: log_polar(x, (3, 5), f, r_min_exp=-2.0, radius=0.6), (img, fix))
    p = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: inverse_log_polar(q, (5, 6), (0.1, 0.1), r_min_exp=-2.0), (p,))


def test_module_and_meta_device():
    mod = LogPolarFoveation((5, 8), r_min_exp=-4.0)
    x = torch.randn(2, 3, 9, 11, device="meta")
    out = mod(x, torch.zeros(2, 2, device="meta"))
    assert out.shape == (2, 3, 5, 8) and out.device.type == "meta"
    assert mod.inverse(out, (9, 11)).shape == (2, 3, 9, 11)
    assert "out_size=(5, 8)" in repr(mod)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(r_min_exp=0.0), "r_min_exp must be < r_max_exp"),
        (dict(radius=-1.0), "radius must be > 0"),
        (dict(padding_mode="wrap"), "padding_mode must be one of"),
        (dict(fixation=torch.zeros(3, 2)), r"fixation must be shaped \(2,\) or \(B, 2\)"),
        (dict(out_size=(1, 4)), "out_size must be >="),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(out_size=(4, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        log_polar(torch.zeros(2, 1, 5, 5), **args)


def test_bad_types():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        log_polar([[0.0]], (4, 4))
    with pytest.raises(ValueError, match="rings must be an int >= 2"):
        ring_ratio(1)
