"""Log-polar foveation about a fixation, and its inverse.

Foveated retinotopy (Dabane, Perrinet et al., "Foveated Retinotopy Improves Classification and Localization in
CNNs", arXiv 2402.15480): the image is resampled on a log-polar grid centred on a fixation point, so that a
rotation of the image about the fixation becomes a circular shift of the angle axis and a zoom becomes a shift of
the radius axis. The grid of the paper's code, in ``grid_sample``'s normalised coordinates (``align_corners=False``,
x to the right, y down, the image spanning ``[-1, 1]`` on both axes)::

    r_i     = radius * 2 ** (r_max_exp + (r_min_exp - r_max_exp) * i / (R - 1)),   i = 0 .. R - 1
    theta_j = theta0 + 2 pi j / A,                                                 j = 0 .. A - 1
    foveal[i, j] = image(f_x + r_i cos theta_j, f_y + r_i sin theta_j)             (bilinear)

with the paper's defaults ``r_max_exp = 0``, ``r_min_exp = -7.5``, ``theta0 = -pi / 4``: row 0 is the periphery,
row ``R - 1`` the fovea, and the columns go round the circle. Consequences (exact for the continuous image):

- rotating the image by ``phi = 2 pi k / A`` about the fixation rolls the columns by ``k``;
- zooming in by ``s = 2 ** ((r_max_exp - r_min_exp) / (R - 1))`` (one ring ratio) about the fixation moves every
  row up by one: ``foveal'[i] = foveal[i + 1]``.

The fixation ``(f_x, f_y)`` is in the same normalised coordinates (``(0, 0)`` is the image centre). On a
non-square image the normalised axes have different pixel scales, so rings are ellipses in pixels, as in the paper
(whose images are square).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._args import check_map as _check_map
from ._args import pair as _pair
from ._args import real as _real
from ._args import work_dtype

__all__ = ["LogPolarFoveation", "inverse_log_polar", "log_polar", "log_polar_grid", "ring_ratio"]

_PADDING = ("zeros", "border", "reflection")


def _geometry(r_min_exp: float, r_max_exp: float, radius: float) -> tuple[float, float, float]:
    lo, hi, rad = _real(r_min_exp, "r_min_exp"), _real(r_max_exp, "r_max_exp"), _real(radius, "radius")
    if not lo < hi:
        raise ValueError(f"r_min_exp must be < r_max_exp, got r_min_exp={r_min_exp!r}, r_max_exp={r_max_exp!r}")
    if rad <= 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    return lo, hi, rad


def ring_ratio(rings: int, r_min_exp: float = -7.5, r_max_exp: float = 0.0) -> float:
    """The zoom factor between neighbouring rings, ``2 ** ((r_max_exp - r_min_exp) / (R - 1))``."""
    if isinstance(rings, bool) or not isinstance(rings, int) or rings < 2:
        raise ValueError(f"rings must be an int >= 2, got {rings!r}")
    lo, hi, _ = _geometry(r_min_exp, r_max_exp, 1.0)
    return 2.0 ** ((hi - lo) / (rings - 1))


def log_polar_grid(out_size: Sequence[int], r_min_exp: float = -7.5, r_max_exp: float = 0.0,
                   theta0: float = -math.pi / 4, radius: float = 1.0, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Offsets ``(x, y)`` of the log-polar samples from the fixation, normalised units, ``(R, A, 2)``.

    ``grid[i, j] = radius * 2 ** e_i (cos theta_j, sin theta_j)``, ``e_i = r_max_exp + (r_min_exp - r_max_exp) i /
    (R - 1)``, ``theta_j = theta0 + 2 pi j / A`` (arXiv 2402.15480; see the module docstring).
    """
    rings, angles = _pair(out_size, "out_size", (2, 1))
    lo, hi, rad = _geometry(r_min_exp, r_max_exp, radius)
    t0 = _real(theta0, "theta0")
    exps = torch.linspace(hi, lo, rings, dtype=torch.float64, device=device)
    r = rad * torch.exp2(exps)
    theta = t0 + torch.arange(angles, dtype=torch.float64, device=device) * (2 * math.pi / angles)
    grid = torch.stack((r[:, None] * torch.cos(theta)[None, :], r[:, None] * torch.sin(theta)[None, :]), dim=-1)
    return grid.to(dtype)


def _fixations(fixation: Tensor | Sequence[float] | None, batch: int, like: Tensor) -> Tensor:
    """Fixations as a ``(B, 2)`` tensor on ``like``'s device and dtype."""
    if fixation is None:
        return like.new_zeros(batch, 2)
    if not isinstance(fixation, Tensor):
        if not isinstance(fixation, Sequence) or isinstance(fixation, str) or len(fixation) != 2:
            raise TypeError(f"fixation must be a pair (x, y), a (B, 2) tensor or None, got {fixation!r}")
        fx, fy = (_real(v, "fixation") for v in fixation)
        return like.new_tensor([fx, fy]).expand(batch, 2)
    if fixation.shape == (2,):
        fixation = fixation.expand(batch, 2)
    if fixation.shape != (batch, 2):
        raise ValueError(f"fixation must be shaped (2,) or (B, 2) = ({batch}, 2), got {tuple(fixation.shape)}")
    return fixation.to(device=like.device, dtype=like.dtype)


def log_polar(x: Tensor, out_size: Sequence[int], fixation: Tensor | Sequence[float] | None = None,
              r_min_exp: float = -7.5, r_max_exp: float = 0.0, theta0: float = -math.pi / 4, radius: float = 1.0,
              padding_mode: str = "zeros") -> Tensor:
    """Log-polar foveation of ``x`` ``(B, C, H, W)`` about ``fixation``: ``(B, C, R, A)``.

    ``out[b, :, i, j] = x_b(f_b + radius * 2 ** e_i (cos theta_j, sin theta_j))`` (arXiv 2402.15480), bilinear,
    ``grid_sample`` with ``align_corners=False`` and ``padding_mode`` (``"zeros"`` as in the paper's code).
    ``fixation`` is ``(x, y)`` in normalised coordinates, a pair or a ``(B, 2)`` tensor (one per image; it may
    require grad); default the image centre. Differentiable in ``x`` and ``fixation``.
    """
    _check_map(x, "x", "(B, C, H, W)")
    if padding_mode not in _PADDING:
        raise ValueError(f"padding_mode must be one of {_PADDING}, got {padding_mode!r}")
    work = work_dtype(x)
    base = log_polar_grid(out_size, r_min_exp, r_max_exp, theta0, radius, device=x.device, dtype=work)
    fix = _fixations(fixation, x.shape[0], x.new_empty(0, dtype=work))
    grid = base.unsqueeze(0) + fix[:, None, None, :]
    out = F.grid_sample(x.to(work), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.to(x.dtype)


def inverse_log_polar(p: Tensor, size: Sequence[int], fixation: Tensor | Sequence[float] | None = None,
                      r_min_exp: float = -7.5, r_max_exp: float = 0.0, theta0: float = -math.pi / 4,
                      radius: float = 1.0) -> Tensor:
    """Map a log-polar map ``p`` ``(B, C, R, A)`` back onto an image of ``size=(H, W)``: ``(B, C, H, W)``.

    Pixel ``q`` (normalised, ``align_corners=False``) with ``d = (q - f) / radius``, ``rho = |d|``,
    ``phi = atan2(d_y, d_x)`` reads ``p`` at row ``(r_max_exp - log2 rho) (R - 1) / (r_max_exp - r_min_exp)`` and
    column ``((phi - theta0) mod 2 pi) A / (2 pi)``, bilinearly, with the angle axis periodic. Pixels inside the
    innermost ring (``rho < radius 2 ** r_min_exp``) take the innermost ring's value; pixels beyond the outer ring
    (``rho > radius 2 ** r_max_exp``) are 0. The other arguments must be those given to :func:`log_polar`.
    """
    _check_map(p, "p", "(B, C, R, A)")
    height, width = _pair(size, "size", (1, 1))
    rings, angles = p.shape[-2:]
    if rings < 2:
        raise ValueError(f"p must have at least 2 rings (dim -2), got shape {tuple(p.shape)}")
    lo, hi, rad = _geometry(r_min_exp, r_max_exp, radius)
    t0 = _real(theta0, "theta0")
    work = work_dtype(p)
    fix = _fixations(fixation, p.shape[0], p.new_empty(0, dtype=work))
    qy = (2 * torch.arange(height, device=p.device, dtype=work) + 1) / height - 1
    qx = (2 * torch.arange(width, device=p.device, dtype=work) + 1) / width - 1
    dx = (qx[None, None, :] - fix[:, 0, None, None]) / rad
    dy = (qy[None, :, None] - fix[:, 1, None, None]) / rad
    rho = torch.sqrt(dx * dx + dy * dy)
    row = (hi - torch.log2(rho.clamp_min(2.0 ** lo))) * ((rings - 1) / (hi - lo))
    col = torch.remainder(torch.atan2(dy, dx) - t0, 2 * math.pi) * (angles / (2 * math.pi))
    grid = torch.stack((2 * col / angles - 1, 2 * row / (rings - 1) - 1), dim=-1)
    wrapped = torch.cat((p, p[..., :1]), dim=-1).to(work)
    out = F.grid_sample(wrapped, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.masked_fill((rho > 2.0 ** hi)[:, None], 0.0)
    return out.to(p.dtype)


class LogPolarFoveation(nn.Module):
    """Module form of :func:`log_polar` (``forward(x, fixation=None)``) with :meth:`inverse`.

    Foveated retinotopy, arXiv 2402.15480. ``out_size=(R, A)``: rings (rows, periphery first) x angles (columns).
    """

    def __init__(self, out_size: Sequence[int], r_min_exp: float = -7.5, r_max_exp: float = 0.0,
                 theta0: float = -math.pi / 4, radius: float = 1.0, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.out_size = _pair(out_size, "out_size", (2, 1))
        _geometry(r_min_exp, r_max_exp, radius)
        if padding_mode not in _PADDING:
            raise ValueError(f"padding_mode must be one of {_PADDING}, got {padding_mode!r}")
        self.r_min_exp, self.r_max_exp, self.theta0 = float(r_min_exp), float(r_max_exp), float(theta0)
        self.radius, self.padding_mode = float(radius), padding_mode

    def forward(self, x: Tensor, fixation: Tensor | Sequence[float] | None = None) -> Tensor:
        return log_polar(x, self.out_size, fixation, self.r_min_exp, self.r_max_exp, self.theta0, self.radius,
                         self.padding_mode)

    def inverse(self, p: Tensor, size: Sequence[int], fixation: Tensor | Sequence[float] | None = None) -> Tensor:
        """:func:`inverse_log_polar` with this module's geometry."""
        return inverse_log_polar(p, size, fixation, self.r_min_exp, self.r_max_exp, self.theta0, self.radius)

    def extra_repr(self) -> str:
        return (f"out_size={self.out_size}, r_exp=[{self.r_min_exp}, {self.r_max_exp}], theta0={self.theta0:.4f}, "
                f"radius={self.radius}, padding_mode={self.padding_mode!r}")
