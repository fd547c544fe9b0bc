"""RoI tanh-polar and tanh-Cartesian warps (RTNet, arXiv 2102.02717): naive formulas, warp-restore by radius band,
the RoI ellipse on column tanh(1) W_t, polar <-> Cartesian resampling, background-flip restore, gradients, meta,
errors."""

from __future__ import annotations

import math

import pytest
import torch

from visattn.transforms import (
    restore_probabilities,
    roi_tanh_polar_restore,
    roi_tanh_polar_warp,
    roi_tanh_restore,
    roi_tanh_warp,
    tanh_cartesian_to_tanh_polar,
    tanh_polar_to_tanh_cartesian,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BOXES = torch.tensor([[20.0, 18.0, 44.0, 50.0], [10.0, 12.0, 40.0, 30.0]], dtype=torch.float64)
ANGLES = torch.tensor([0.0, 0.4], dtype=torch.float64)


def naive_polar_point(box, angle, j, k, out_size, keep):
    """Source pixel (x, y) of tanh-polar sample (row j, column k), from the paper's formulas."""
    height_t, width_t = out_size
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rx, ry = (x2 - x1) / math.sqrt(math.pi), (y2 - y1) / math.sqrt(math.pi)
    u, theta = k / width_t, 2 * math.pi * j / height_t
    if keep:
        rho = math.atanh(u) * rx * ry / math.sqrt(ry ** 2 * math.cos(theta) ** 2 + rx ** 2 * math.sin(theta) ** 2)
        dx, dy = rho * math.cos(theta), rho * math.sin(theta)
    else:
        dx, dy = rx * math.atanh(u) * math.cos(theta), ry * math.atanh(u) * math.sin(theta)
    return cx + math.cos(angle) * dx - math.sin(angle) * dy, cy + math.sin(angle) * dx + math.cos(angle) * dy


@pytest.mark.parametrize("keep", [False, True])
def test_polar_warp_matches_the_naive_formula(keep, bilinear):
    img = torch.randn(2, 2, 9, 11, dtype=torch.float64)
    boxes = torch.tensor([[2.0, 1.5, 7.0, 6.0], [1.0, 3.0, 9.5, 7.0]], dtype=torch.float64)
    out = roi_tanh_polar_warp(img, boxes, (6, 5), torch.tensor([0.3, -1.1], dtype=torch.float64), keep)
    for b, angle in enumerate((0.3, -1.1)):
        for j in range(6):
            for k in range(5):
                x, y = naive_polar_point(boxes[b].tolist(), angle, j, k, (6, 5), keep)
                torch.testing.assert_close(out[b, :, j, k], bilinear(img[b], y, x), rtol=0, atol=1e-12)


def test_cartesian_warp_matches_the_naive_formula(bilinear):
    img = torch.randn(1, 2, 9, 11, dtype=torch.float64)
    box, angle = [2.0, 1.5, 7.0, 6.0], 0.5
    out = roi_tanh_warp(img, torch.tensor(box, dtype=torch.float64), (5, 7), angle)
    cx, cy, hw, hh = 4.5, 3.75, 2.5, 2.25
    for j in range(5):
        for k in range(7):
            u, v = -1 + (2 * k + 1) / 7, -1 + (2 * j + 1) / 5
            dx, dy = hw * math.atanh(u), hh * math.atanh(v)
            x = cx + math.cos(angle) * dx - math.sin(angle) * dy
            y = cy + math.sin(angle) * dx + math.cos(angle) * dy
            torch.testing.assert_close(out[0, :, j, k], bilinear(img[0], y, x), rtol=0, atol=1e-12)


def _smooth(height=64, width=64):
    y = torch.arange(height, dtype=torch.float64)[:, None]
    x = torch.arange(width, dtype=torch.float64)[None]
    return (torch.sin(x / 7.0) * torch.cos(y / 9.0) + 0.3 * torch.sin((x + y) / 11))[None, None].repeat(2, 1, 1, 1)


def _ellipse_radius(size=(64, 64)):
    """Normalised RoI-ellipse radius |Rot(-a)(p - c) / r| of every pixel for BOXES, ANGLES: (2, H, W)."""
    y = torch.arange(size[0], dtype=torch.float64)[None, :, None]
    x = torch.arange(size[1], dtype=torch.float64)[None, None, :]
    c = (BOXES[:, :2] + BOXES[:, 2:]) / 2
    r = (BOXES[:, 2:] - BOXES[:, :2]) / math.sqrt(math.pi)
    px, py = x - c[:, 0, None, None], y - c[:, 1, None, None]
    cos, sin = torch.cos(ANGLES)[:, None, None], torch.sin(ANGLES)[:, None, None]
    dx, dy = cos * px + sin * py, -sin * px + cos * py
    return torch.sqrt((dx / r[:, 0, None, None]) ** 2 + (dy / r[:, 1, None, None]) ** 2)


def test_polar_warp_then_restore_by_radius_band():
    img = _smooth()
    rho = _ellipse_radius()
    warped = roi_tanh_polar_warp(img, BOXES, (128, 64), ANGLES)
    err = (roi_tanh_polar_restore(warped, BOXES, (64, 64), ANGLES) - img).abs()[:, 0]
    bands = {(0.0, 0.5): 4e-3, (0.5, 1.0): 8e-3, (1.0, 1.5): 2e-2}
    # measured max errors: 1.9e-3 (rho < 0.5), 3.8e-3 (0.5-1), 9.2e-3 (1-1.5), 0.55 (1.5-2): the warp's radial
    # resolution falls as 1 - tanh^2 past the RoI, so far context is restored coarsely, by design.
    for (lo, hi), tol in bands.items():
        band = (rho >= lo) & (rho < hi)
        assert err[band].max() < tol, (lo, hi, err[band].max())


def test_keep_aspect_ratio_round_trip_inside_the_roi():
    img = _smooth()
    warped = roi_tanh_polar_warp(img, BOXES, (128, 64), ANGLES, keep_aspect_ratio=True)
    back = roi_tanh_polar_restore(warped, BOXES, (64, 64), ANGLES, keep_aspect_ratio=True)
    inside = _ellipse_radius() < 1.0
    assert (back - img).abs()[:, 0][inside].max() < 8e-3  # measured 4.1e-3


def test_cartesian_warp_then_restore():
    img = _smooth()
    back = roi_tanh_restore(roi_tanh_warp(img, BOXES, (64, 64), ANGLES), BOXES, (64, 64), ANGLES)
    inside = _ellipse_radius() < 1.0
    assert (back - img).abs()[:, 0][inside].max() < 1e-2  # measured 5.4e-3


@pytest.mark.parametrize("keep", [False, True])
def test_roi_ellipse_lands_on_column_tanh_1(keep):
    # warp the image of the normalised ellipse radius: every row crosses 1 at column tanh(1) W_t
    width_t = 40
    y = torch.arange(64, dtype=torch.float64)[None, :, None]
    x = torch.arange(64, dtype=torch.float64)[None, None, :]
    c = (BOXES[:, :2] + BOXES[:, 2:]) / 2
    r = (BOXES[:, 2:] - BOXES[:, :2]) / math.sqrt(math.pi)
    px, py = x - c[:, 0, None, None], y - c[:, 1, None, None]
    cos, sin = torch.cos(ANGLES)[:, None, None], torch.sin(ANGLES)[:, None, None]
    dx, dy = cos * px + sin * py, -sin * px + cos * py
    if keep:  # |d| / R(phi): the ellipse in polar form
        phi = torch.atan2(dy, dx)
        rx, ry = r[:, 0, None, None], r[:, 1, None, None]
        radius = rx * ry / torch.sqrt(ry ** 2 * torch.cos(phi) ** 2 + rx ** 2 * torch.sin(phi) ** 2)
        field = torch.sqrt(dx ** 2 + dy ** 2) / radius
    else:
        field = torch.sqrt((dx / r[:, 0, None, None]) ** 2 + (dy / r[:, 1, None, None]) ** 2)
    warped = roi_tanh_polar_warp(field[:, None], BOXES, (16, width_t), ANGLES, keep_aspect_ratio=keep)[:, 0]
    k = (warped >= 1).to(torch.uint8).argmax(dim=-1) - 1  # last column inside (far columns leave the image: 0)
    lo, hi = warped.gather(-1, k[..., None])[..., 0], warped.gather(-1, (k + 1)[..., None])[..., 0]
    crossing = k + (1 - lo) / (hi - lo)
    expected = math.tanh(1.0) * width_t  # 30.46
    # measured: within 0.03 columns of tanh(1) W_t in every row (linear interpolation between columns of a convex
    # artanh profile, and the bilinear read of the field)
    assert (crossing - expected).abs().max() < 0.1, crossing


def test_polar_to_cartesian_matches_warping_the_image():
    img = _smooth(96, 96)
    boxes = torch.tensor([[30.0, 28.0, 62.0, 70.0]], dtype=torch.float64).expand(2, 4)
    polar = roi_tanh_polar_warp(img, boxes, (256, 128))
    direct = roi_tanh_warp(img, boxes, (48, 48))
    via = tanh_polar_to_tanh_cartesian(polar, boxes, (48, 48))
    # compare away from the tanh-Cartesian rim (|u| > 0.9 is far outside the RoI): measured 1.4e-3
    assert (via - direct)[..., 3:-3, 3:-3].abs().max() < 1e-2
    back = tanh_cartesian_to_tanh_polar(direct, boxes, (256, 128))
    assert (back - polar)[..., : 128 * 3 // 4].abs().max() < 1.5e-2  # measured 8.4e-3 up to u = 0.75


def test_background_flip_restore():
    probs = torch.softmax(torch.randn(2, 3, 16, 8, dtype=torch.float64), dim=1)
    plain = roi_tanh_polar_restore(probs, BOXES, (64, 64), ANGLES)
    flipped = restore_probabilities(probs, roi_tanh_polar_restore, BOXES, (64, 64), ANGLES, background=0)
    far = plain.sum(dim=1) < 0.5  # past the last ring the zero padding blends in: probabilities no longer sum to 1
    assert far.any()
    assert (flipped[:, 0][far] > 0.5).all()  # ... and the flip makes those pixels background
    torch.testing.assert_close(flipped.sum(dim=1), torch.ones(2, 64, 64, dtype=torch.float64))
    torch.testing.assert_close(flipped[:, 1:], plain[:, 1:])
    background = roi_tanh_polar_restore(1 - probs[:, :1], BOXES, (64, 64), ANGLES)[:, 0]
    torch.testing.assert_close(flipped[:, 0], 1 - background)
    cart = restore_probabilities(probs, roi_tanh_restore, BOXES, (64, 64), ANGLES, background=2)
    torch.testing.assert_close(cart.sum(dim=1), torch.ones(2, 64, 64, dtype=torch.float64))


def test_gradients_in_images_boxes_and_angles():
    img = torch.randn(1, 1, 7, 8, dtype=torch.float64, requires_grad=True)
    box = torch.tensor([[2.1, 1.7, 5.3, 4.9]], dtype=torch.float64, requires_grad=True)
    angle = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, b, a: roi_tanh_polar_warp(i, b, (5, 4), a, True), (img, box, angle))
    assert torch.autograd.gradcheck(lambda i, b, a: roi_tanh_warp(i, b, (4, 5), a), (img, box, angle))
    warped = torch.randn(1, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: roi_tanh_polar_restore(w, box.detach(), (7, 8), 0.3), (warped,))
    assert torch.autograd.gradcheck(lambda w: roi_tanh_restore(w, box.detach(), (7, 8), 0.3), (warped,))


def test_float32_and_meta():
    img = _smooth()
    ref = roi_tanh_polar_warp(img, BOXES, (32, 24), ANGLES)
    out = roi_tanh_polar_warp(img.float(), BOXES.float(), (32, 24), ANGLES.float())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)  # float32 grid round-off, measured 6.9e-6
    meta = torch.zeros(2, 3, 20, 30, device="meta")
    boxes = torch.tensor([[2.0, 3.0, 10.0, 12.0]] * 2, device="meta")
    assert roi_tanh_polar_warp(meta, boxes, (16, 8)).shape == (2, 3, 16, 8)
    assert roi_tanh_polar_restore(torch.zeros(2, 3, 16, 8, device="meta"), boxes, (20, 30)).shape == (2, 3, 20, 30)
    assert roi_tanh_warp(meta, boxes, (9, 7)).shape == (2, 3, 9, 7)


@pytest.mark.parametrize(
    ("box", "match"),
    [
        ([70.0, 2.0, 80.0, 9.0], r"boxes\[0\].*an overlap with the image \[0, 15\] x \[0, 15\]"),
        ([5.0, 2.0, 5.0, 9.0], r"boxes\[0\].*x1 < x2"),
        ([1.0, 9.0, 5.0, 2.0], r"boxes\[0\].*y1 < y2"),
    ],
)
def test_bad_boxes(box, match):
    with pytest.raises(ValueError, match=match):
        roi_tanh_polar_warp(torch.zeros(1, 1, 16, 16), box, (8, 8))


def test_other_bad_input():
    img = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"boxes\[1\] = \[3.0, 1.0, 2.0, 5.0\] must be .* x1 < x2 and y1 < y2"):
        bad = torch.tensor([[1.0, 1.0, 5.0, 5.0], [3.0, 1.0, 2.0, 5.0]])
        tanh_polar_to_tanh_cartesian(torch.zeros(2, 1, 8, 4), bad, (8, 8))
    with pytest.raises(TypeError, match="boxes must be a"):
        roi_tanh_warp(img, [1.0, 2.0, 3.0], (8, 8))
    with pytest.raises(ValueError, match=r"boxes must be shaped \(4,\) or \(B, 4\)"):
        roi_tanh_warp(img, torch.zeros(3, 4), (8, 8))
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        roi_tanh_warp(img, [1.0, 1.0, 5.0, 5.0], (8, 8), padding_mode="circular")
    with pytest.raises(ValueError, match=r"angle must be .* shaped \(B,\)"):
        roi_tanh_warp(img, [1.0, 1.0, 5.0, 5.0], (8, 8), angle=torch.zeros(3))
    with pytest.raises(ValueError, match="background must be a channel index"):
        restore_probabilities(torch.zeros(2, 3, 4, 4), roi_tanh_restore, [1.0, 1.0, 5.0, 5.0], (8, 8), background=3)
