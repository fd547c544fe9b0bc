"""Polar resampling of a feature map about a centre, and its inverse.

The polar step of the Radial Strip Transformer (Chen et al., "Spread Your Wings: A Radial Strip Transformer for
Image Deblurring", arXiv 2404.00358): features are resampled on a (radius x azimuth) grid so that a row of the
polar map is a ring and a column is a ray, and strip attention on that grid attends along rings or rays.

Geometry (pixel units). Pixel ``(i, j)`` of an ``(H, W)`` map has its centre at row ``y = i``, column ``x = j``.
The centre ``(cy, cx)`` defaults to the middle of the map, ``((H - 1) / 2, (W - 1) / 2)``, and ``max_radius``
to the largest disk about it that stays inside the pixel centres, ``min(cy, H - 1 - cy, cx, W - 1 - cx)``. The
polar grid has ``R`` rings and ``A`` azimuths::

    r_m   = max_radius * m / (R - 1),   m = 0 .. R - 1   (ring 0 is the centre, ring R - 1 the rim)
    phi_n = 2 pi n / A,                 n = 0 .. A - 1   (periodic: 2 pi is azimuth 0 again)
    polar[m, n] = image(y = cy + r_m sin(phi_n), x = cx + r_m cos(phi_n))   (bilinear)

Rows grow downward, so ``phi`` turns clockwise on screen. :func:`polar_resample` samples the image with
``grid_sample(mode="bilinear", align_corners=False, padding_mode="zeros")``, the coordinate ``x`` being sent to
``(2 x + 1) / W - 1`` so that pixel centres sit where ``align_corners=False`` puts them; samples that fall outside
the pixel centres (only when ``max_radius`` exceeds the default) blend with zeros.

:func:`polar_inverse` maps a polar map back: pixel ``(y, x)`` at radius ``rho`` and azimuth ``phi`` in
``[0, 2 pi)`` reads the polar map at ring ``rho (R - 1) / max_radius`` and azimuth ``phi A / (2 pi)``, bilinearly
(``grid_sample`` with ``align_corners=True`` on the map whose azimuth axis is wrap-padded with its first column,
so azimuths between ``phi_{A-1}`` and ``2 pi`` interpolate towards ``phi_0``). Pixels outside the disk
(``rho > max_radius``) are 0; :func:`disk_mask` says which pixels are inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._args import check_map as _check_map
from ._args import pair as _pair
from ._args import real as _real
from ._args import work_dtype


def polar_center(size: Sequence[int], center: Sequence[float] | None = None) -> tuple[float, float]:
    """The centre ``(cy, cx)`` in pixel units for a map of ``size=(H, W)``: ``center``, checked, or the middle.

    ``center`` is ``(row, column)`` and must lie within the pixel centres, ``0 <= cy <= H - 1`` and
    ``0 <= cx <= W - 1``.
    """
    height, width = _pair(size, "size", (1, 1))
    if center is None:
        return (height - 1) / 2, (width - 1) / 2
    if not isinstance(center, Sequence) or isinstance(center, str) or len(center) != 2:
        raise TypeError(f"center must be a pair (row, column) of real numbers or None, got {center!r}")
    cy, cx = (_real(c, "center") for c in center)
    if not (0 <= cy <= height - 1 and 0 <= cx <= width - 1):
        raise ValueError(
            f"center must lie within the pixel centres [0, {height - 1}] x [0, {width - 1}] of size={tuple(size)}, "
            f"got center={tuple(center)!r}"
        )
    return cy, cx


def polar_max_radius(size: Sequence[int], center: Sequence[float] | None = None,
                     max_radius: float | None = None) -> float:
    """The rim radius in pixels: ``max_radius``, checked (> 0), or the largest disk inside the pixel centres."""
    height, width = _pair(size, "size", (1, 1))
    cy, cx = polar_center(size, center)
    if max_radius is None:
        radius = min(cy, height - 1 - cy, cx, width - 1 - cx)
        if radius <= 0:
            raise ValueError(
                f"max_radius defaults to the distance from center=({cy}, {cx}) to the nearest border pixel, which is "
                f"{radius} for size={tuple(size)}; pass max_radius > 0"
            )
        return radius
    radius = _real(max_radius, "max_radius")
    if radius <= 0:
        raise ValueError(f"max_radius must be > 0, got {max_radius!r}")
    return radius


def polar_sample_points(size: Sequence[int], out_size: Sequence[int], center: Sequence[float] | None = None,
                        max_radius: float | None = None, device: torch.device | str | None = None) -> Tensor:
    """Image coordinates ``(y, x)`` of the polar samples, float64 ``(R, A, 2)``.

    Sample ``(m, n)`` is at ``(cy + r_m sin phi_n, cx + r_m cos phi_n)``, ``r_m = max_radius m / (R - 1)``,
    ``phi_n = 2 pi n / A``.
    """
    rings, angles = _pair(out_size, "out_size", (2, 1))
    cy, cx = polar_center(size, center)
    radius = polar_max_radius(size, center, max_radius)
    r = torch.arange(rings, dtype=torch.float64, device=device) * (radius / (rings - 1))
    phi = torch.arange(angles, dtype=torch.float64, device=device) * (2 * math.pi / angles)
    y = cy + r[:, None] * torch.sin(phi)[None, :]
    x = cx + r[:, None] * torch.cos(phi)[None, :]
    return torch.stack((y, x), dim=-1)


def disk_mask(size: Sequence[int], center: Sequence[float] | None = None, max_radius: float | None = None,
              device: torch.device | str | None = None) -> Tensor:
    """Bool ``(H, W)``: True for the pixels within ``max_radius`` of the centre (those :func:`polar_inverse` fills)."""
    return _pixel_polar(size, center, max_radius, device)[0] <= polar_max_radius(size, center, max_radius)


def _pixel_polar(size: Sequence[int], center: Sequence[float] | None, max_radius: float | None,
                 device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    """Radius and azimuth in ``[0, 2 pi)`` of every pixel, float64 ``(H, W)`` each."""
    height, width = _pair(size, "size", (1, 1))
    cy, cx = polar_center(size, center)
    dy = torch.arange(height, dtype=torch.float64, device=device)[:, None] - cy
    dx = torch.arange(width, dtype=torch.float64, device=device)[None, :] - cx
    rho = torch.sqrt(dy * dy + dx * dx)
    phi = torch.remainder(torch.atan2(dy.expand(height, width), dx.expand(height, width)), 2 * math.pi)
    return rho, phi


def _sample(t: Tensor, grid: Tensor, align_corners: bool) -> Tensor:
    """``grid_sample`` (bilinear, zeros padding); half-precision inputs are sampled in float32 and cast back."""
    work = work_dtype(t)
    grid = grid.to(work).unsqueeze(0).expand(t.shape[0], *grid.shape)
    out = F.grid_sample(t.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out.to(t.dtype)


def polar_resample(x: Tensor, out_size: Sequence[int], center: Sequence[float] | None = None,
                   max_radius: float | None = None) -> Tensor:
    """Resample ``x`` ``(B, C, H, W)`` on ``R`` rings x ``A`` azimuths about ``center``: ``(B, C, R, A)``.

    ``polar[m, n] = x(cy + r_m sin phi_n, cx + r_m cos phi_n)`` with ``r_m = max_radius m / (R - 1)`` and
    ``phi_n = 2 pi n / A`` (RST, arXiv 2404.00358), bilinear; see the module docstring for the conventions.
    ``out_size=(R, A)`` needs ``R >= 2`` (ring 0 is the centre, ring ``R - 1`` the rim).
    """
    _check_map(x, "x", "(B, C, H, W)")
    size = tuple(x.shape[-2:])
    points = polar_sample_points(size, out_size, center, max_radius, device=x.device)
    height, width = size
    grid = torch.stack(((2 * points[..., 1] + 1) / width - 1, (2 * points[..., 0] + 1) / height - 1), dim=-1)
    return _sample(x, grid, align_corners=False)


def polar_inverse(p: Tensor, size: Sequence[int], center: Sequence[float] | None = None,
                  max_radius: float | None = None) -> Tensor:
    """Map a polar map ``p`` ``(B, C, R, A)`` back to the image grid ``size=(H, W)``: ``(B, C, H, W)``.

    Pixel ``(y, x)`` at radius ``rho <= max_radius`` and azimuth ``phi`` reads ``p`` at ring
    ``rho (R - 1) / max_radius`` and azimuth ``phi A / (2 pi)`` (periodic), bilinearly; pixels outside the disk
    are 0 (:func:`disk_mask`). ``center`` and ``max_radius`` must be those given to :func:`polar_resample`.
    """
    _check_map(p, "p", "(B, C, R, A)")
    rings = p.shape[-2]
    if rings < 2:
        raise ValueError(f"p must have at least 2 rings (dim -2), got shape {tuple(p.shape)}")
    radius = polar_max_radius(size, center, max_radius)
    rho, phi = _pixel_polar(size, center, max_radius, p.device)
    grid = torch.stack((phi / math.pi - 1, 2 * rho / radius - 1), dim=-1)
    wrapped = torch.cat((p, p[..., :1]), dim=-1)
    out = _sample(wrapped, grid, align_corners=True)
    return out.masked_fill(~(rho <= radius), 0.0)
