"""Polar resampling and its inverse (RST): naive bilinear definitions, round trip by radius, rings, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.masks import materialize, strip_mask
from visattn.transforms import (
    disk_mask,
    polar_center,
    polar_inverse,
    polar_max_radius,
    polar_resample,
    polar_sample_points,
)


def bilinear(img: torch.Tensor, y: float, x: float, wrap_columns: bool = False) -> torch.Tensor:
    """Bilinear read of ``img`` (..., H, W) at pixel coordinates (y, x); zeros outside (or periodic columns)."""
    height, width = img.shape[-2:]
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(img.shape[:-2], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if wrap_columns:
                xx %= width
            if wy * wx != 0 and 0 <= yy < height and 0 <= xx < width:
                out = out + wy * wx * img[..., yy, xx]
    return out


def radius_and_angle(size, center):
    cy, cx = polar_center(size, center)
    y = torch.arange(size[0], dtype=torch.float64)[:, None]
    x = torch.arange(size[1], dtype=torch.float64)[None, :]
    rho = torch.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    phi = torch.remainder(torch.atan2((y - cy).expand(size), (x - cx).expand(size)), 2 * math.pi)
    return rho, phi


@st.composite
def geometries(draw):
    height, width = draw(st.integers(2, 11)), draw(st.integers(2, 11))
    center = None
    if draw(st.booleans()):
        center = (draw(st.floats(0, height - 1)), draw(st.floats(0, width - 1)))
    cy, cx = polar_center((height, width), center)
    inscribed = min(cy, height - 1 - cy, cx, width - 1 - cx)
    max_radius = None if inscribed > 0 and draw(st.booleans()) else draw(st.floats(0.25, 1.5 * max(height, width)))
    rings, angles = draw(st.integers(2, 6)), draw(st.integers(1, 9))
    return (height, width), (rings, angles), center, max_radius


@settings(max_examples=30, deadline=None)
@given(geometry=geometries())
def test_resample_equals_naive_bilinear(geometry):
    size, out_size, center, max_radius = geometry
    img = torch.randn(2, 3, *size, dtype=torch.float64)
    got = polar_resample(img, out_size, center, max_radius)
    cy, cx = polar_center(size, center)
    radius = polar_max_radius(size, center, max_radius)
    assert got.shape == (2, 3, *out_size)
    for m in range(out_size[0]):
        for n in range(out_size[1]):
            r, phi = radius * m / (out_size[0] - 1), 2 * math.pi * n / out_size[1]
            expected = bilinear(img, cy + r * math.sin(phi), cx + r * math.cos(phi))
            torch.testing.assert_close(got[..., m, n], expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(geometry=geometries())
def test_inverse_equals_naive_periodic_bilinear(geometry):
    size, out_size, center, max_radius = geometry
    polar = torch.randn(2, 3, *out_size, dtype=torch.float64)
    got = polar_inverse(polar, size, center, max_radius)
    radius = polar_max_radius(size, center, max_radius)
    rho, phi = radius_and_angle(size, center)
    assert got.shape == (2, 3, *size)
    for i in range(size[0]):
        for j in range(size[1]):
            if rho[i, j] > radius:
                expected = torch.zeros(2, 3, dtype=torch.float64)
            else:
                u = float(rho[i, j]) * (out_size[0] - 1) / radius
                v = float(phi[i, j]) * out_size[1] / (2 * math.pi)
                expected = bilinear(polar, u, v, wrap_columns=True)
            torch.testing.assert_close(got[..., i, j], expected, rtol=1e-10, atol=1e-10)


def smooth_image(size, center):
    """A low-frequency sinusoid plus an off-centre Gaussian bump, float64 (1, 1, H, W)."""
    y = torch.arange(size[0], dtype=torch.float64)[:, None]
    x = torch.arange(size[1], dtype=torch.float64)[None, :]
    wave = torch.sin(2 * math.pi * x / 32 + 0.3) * torch.cos(2 * math.pi * y / 24)
    bump = torch.exp(-((x - center[1] + 5) ** 2 + (y - center[0] - 3) ** 2) / (2 * 10.0**2))
    return (wave + bump)[None, None]


# Max |inverse(resample(img)) - img| by radius band (fraction of max_radius), for 64 rings x 256 azimuths.
# The error is dominated by bilinear interpolation of the pixel grid (about h^2 |f''| / 8 with h = 1 pixel).
ROUND_TRIP_BOUNDS = ((0.0, 0.25, 0.012), (0.25, 0.5, 0.012), (0.5, 0.75, 0.015), (0.75, 1.0, 0.018))


@pytest.mark.parametrize(("size", "center"), [((64, 64), None), ((61, 70), (28.0, 36.5))])
def test_round_trip_reproduces_a_smooth_image_inside_the_disk(size, center):
    cy, cx = polar_center(size, center)
    img = smooth_image(size, (cy, cx))
    back = polar_inverse(polar_resample(img, (64, 256), center), size, center)
    radius = polar_max_radius(size, center)
    rho, _ = radius_and_angle(size, center)
    error = (back - img).abs()[0, 0]
    for low, high, bound in ROUND_TRIP_BOUNDS:
        band = (rho >= low * radius) & (rho <= high * radius)
        assert band.any()
        assert error[band].max() < bound, (low, high, float(error[band].max()))
    outside = ~disk_mask(size, center)
    torch.testing.assert_close(outside, rho > radius)
    assert outside.any() and bool((back[0, 0][outside] == 0).all())


def test_round_trip_error_is_second_order_in_frequency():
    """Halving every frequency of the test image divides the round-trip error by about 4 (bilinear, O(h^2))."""
    size = (64, 64)
    y = torch.arange(64, dtype=torch.float64)[:, None]
    x = torch.arange(64, dtype=torch.float64)[None, :]
    errors = []
    for period in (16.0, 32.0):
        img = (torch.sin(2 * math.pi * x / period) * torch.cos(2 * math.pi * y / period))[None, None]
        back = polar_inverse(polar_resample(img, (128, 512)), size)
        errors.append(float((back - img).abs()[0, 0][disk_mask(size)].max()))
    assert 3.0 < errors[0] / errors[1] < 5.0, errors


def test_rings_are_circles_and_columns_are_rays():
    size, out_size, center = (21, 25), (6, 10), (9.0, 13.5)
    points = polar_sample_points(size, out_size, center)
    radius = polar_max_radius(size, center)
    dist = torch.sqrt((points[..., 0] - 9.0) ** 2 + (points[..., 1] - 13.5) ** 2)
    expected_r = radius * torch.arange(6, dtype=torch.float64) / 5
    torch.testing.assert_close(dist, expected_r[:, None].expand(6, 10), rtol=0, atol=1e-12)
    angle = torch.atan2(points[1:, :, 0] - 9.0, points[1:, :, 1] - 13.5)
    expected_phi = 2 * math.pi * torch.arange(10, dtype=torch.float64) / 10
    torch.testing.assert_close(torch.remainder(angle - expected_phi + 1e-9, 2 * math.pi), torch.full_like(angle, 1e-9))
    # The ring strip of the polar token grid (strip_mask rows, width 1) groups exactly the samples of one radius.
    same_strip = materialize(strip_mask("rows", 1), out_size)
    flat = dist.reshape(-1)
    torch.testing.assert_close(same_strip, (flat[:, None] - flat[None, :]).abs() < 1e-9)


def test_a_radial_image_gives_constant_rings():
    """g = rho^2 / 100: bilinear reads err by at most 0.5 / 100 (s (1 - s) <= 1/4 per axis), rings 2 px apart
    differ by at least 0.04, so each ring is constant to 0.005 and no ring mixes in another radius."""
    size = (65, 65)
    rho, _ = radius_and_angle(size, None)
    polar = polar_resample((rho**2 / 100)[None, None], (17, 96))[0, 0]
    r = polar_max_radius(size) * torch.arange(17, dtype=torch.float64) / 16
    spread = polar.max(dim=1).values - polar.min(dim=1).values
    assert float(spread.max()) <= 0.005
    torch.testing.assert_close(polar, (r[:, None] ** 2 / 100).expand(17, 96), rtol=0, atol=0.005)
    assert float((polar[1:].min(dim=1).values - polar[:-1].max(dim=1).values).min()) > 0.03


def test_rotating_the_image_by_90_degrees_shifts_azimuths_by_a_quarter():
    img = torch.randn(2, 3, 13, 13, dtype=torch.float64)
    polar = polar_resample(img, (5, 16))
    rotated = polar_resample(torch.rot90(img, 1, dims=(-2, -1)), (5, 16))
    torch.testing.assert_close(rotated, torch.roll(polar, -4, dims=-1), rtol=1e-10, atol=1e-10)


def test_gradients_of_resample_and_inverse():
    img = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: polar_resample(t, (3, 5), max_radius=2.2), (img,))
    polar = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: polar_inverse(t, (5, 6), max_radius=2.2), (polar,))


def test_bfloat16_within_stated_tolerance():
    """bfloat16 keeps 8 significant bits: results within 2e-2 of float64 for values of order 1."""
    img = smooth_image((32, 32), (15.5, 15.5))
    polar = polar_resample(img, (16, 64))
    polar16 = polar_resample(img.bfloat16(), (16, 64))
    assert polar16.dtype == torch.bfloat16
    torch.testing.assert_close(polar16.double(), polar, rtol=0, atol=2e-2)
    back16 = polar_inverse(polar.bfloat16(), (32, 32))
    torch.testing.assert_close(back16.double(), polar_inverse(polar, (32, 32)), rtol=0, atol=2e-2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"center": (-1.0, 3.0)}, ValueError, "center must lie within"),
        ({"center": (3.0, 9.5)}, ValueError, "center must lie within"),
        ({"center": (3.0,)}, TypeError, "center must be a pair"),
        ({"center": (True, 2.0)}, TypeError, "center must be a finite real"),
        ({"center": (float("nan"), 2.0)}, TypeError, "center must be a finite real"),
        ({"max_radius": 0.0}, ValueError, "max_radius must be > 0"),
        ({"max_radius": -2}, ValueError, "max_radius must be > 0"),
        ({"max_radius": float("inf")}, TypeError, "max_radius must be a finite real"),
        ({"center": (0.0, 4.0)}, ValueError, "pass max_radius > 0"),
        ({"out_size": (1, 8)}, ValueError, "out_size must be >= \\(2, 1\\)"),
        ({"out_size": (4,)}, TypeError, "out_size must be a pair of ints"),
        ({"out_size": (4.0, 8)}, TypeError, "out_size must be a pair of ints"),
    ],
)
def test_resample_rejects_bad_arguments(kwargs, error, match):
    args = {"out_size": (4, 8), "center": None, "max_radius": None} | kwargs
    with pytest.raises(error, match=match):
        polar_resample(torch.randn(1, 1, 7, 9), **args)


def test_maps_and_sizes_are_checked():
    with pytest.raises(ValueError, match=r"x must be shaped \(B, C, H, W\)"):
        polar_resample(torch.randn(7, 9), (4, 8))
    with pytest.raises(TypeError, match="x must be floating point"):
        polar_resample(torch.ones(1, 1, 7, 9, dtype=torch.long), (4, 8))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        polar_resample([[1.0]], (4, 8))
    with pytest.raises(ValueError, match="p must have at least 2 rings"):
        polar_inverse(torch.randn(1, 1, 1, 8), (7, 9))
    with pytest.raises(ValueError, match="size must be >= \\(1, 1\\)"):
        polar_inverse(torch.randn(1, 1, 4, 8), (0, 9))
    with pytest.raises(ValueError, match="center must lie within"):
        disk_mask((7, 9), center=(7.0, 0.0))
