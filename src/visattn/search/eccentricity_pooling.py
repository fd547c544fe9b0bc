"""Eccentricity-dependent pooling: the pooling window grows with the distance from the fixation.

From *Visual Search Asymmetry: Deep Nets and Humans Share Similar Inherent Biases* (Gupta, Zhang, Lee, Kreiman,
NeurIPS 2021, arXiv:2106.02953). The pooled output map (side ``n``, centre ``c = floor(n / 2)``) is cut into
rings around the centre: a fovea of radius ``e_0 = round(fovea * deg2px / 2)`` pooled with the smallest window
``rf_min``, then rings every ``step = round(rf_quant * deg2px / 2)`` pixels whose window is

    rf(e) = rf_min + round(slope * (2 e - fovea * deg2px)),

``e`` being the ring's outer radius, and a last region covering everything outside the rings. A pixel at distance
``d`` belongs to the fovea when ``d < e_0`` and to the ring of outer radius ``e`` when ``e - step <= d < e``.
When the fovea already covers the map (``e_0 > n / 2``) the whole map uses ``rf_min``. Each ring's output is an
ordinary average (or max) pooling with window ``rf(e)`` and stride 2 ("same" padding, padding excluded from the
average), kept only inside the ring; rings sharing a window share one pass (windows never shrink outwards).
Published constants for VGG16's five pooling layers:
``slope = [0, 0, 0.07, 0.16, 0.32]``, ``deg2px = [30, 15, 8, 4, 2]``, ``fovea = 4`` deg, ``rf_quant = 1`` deg,
``rf_min = 2``.

``rounding`` picks how the half-way cases of ``round`` go: ``"half_even"`` is Python 3's ``round`` (banker's
rounding, what the official release computes since it runs these formulas in Python 3), ``"half_up"`` is the
school rule ``floor(x + 0.5)`` some reimplementations use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PUBLISHED_SLOPES = (0.0, 0.0, 3.5 * 0.02, 8 * 0.02, 16 * 0.02)
"""Growth of the pooling window with eccentricity for VGG16's five pooling layers (the release's ``ecc_slope``)."""
PUBLISHED_DEG2PX = tuple(round(30.0 / 2**i) for i in range(5))
"""Pixels per degree of visual angle at the input of each pooling layer: ``round(30 / 2**l)`` = (30, 15, 8, 4, 2)."""
ROUNDINGS = ("half_even", "half_up")


def round_number(x: float, rounding: str = "half_even") -> int:
    """Round ``x`` to an integer: ``"half_even"`` (Python's ``round``, banker's) or ``"half_up"`` (floor(x + 0.5))."""
    if rounding == "half_even":
        return round(x)
    if rounding == "half_up":
        return math.floor(x + 0.5)
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


@dataclass(frozen=True)
class RingLayout:
    """Where each pooling window applies on an ``out_size`` x ``out_size`` map.

    ``outer_radii[i]`` is the outer radius of region ``i`` (the fovea first; the last region is unbounded and
    carries the radius the loop stopped at) and ``rf_sizes[i]`` its pooling window.
    """

    out_size: int
    outer_radii: tuple[int, ...]
    rf_sizes: tuple[int, ...]

    def region_index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(out_size, out_size)`` long tensor on ``device``: the region each output pixel belongs to."""
        n = self.out_size
        coords = torch.arange(n, device=device) - n // 2
        dist2 = coords[:, None] ** 2 + coords[None, :] ** 2
        index = torch.full((n, n), len(self.rf_sizes) - 1, dtype=torch.long, device=device)
        for i in reversed(range(len(self.rf_sizes) - 1)):
            index = torch.where(dist2 < self.outer_radii[i] ** 2, i, index)
        return index


def ring_layout(in_size: int, *, rf_min: int = 2, slope: float = 0.0, deg2px: int = 30, fovea: float = 4.0,
                rf_quant: float = 1.0, stride: int = 2, rounding: str = "half_even") -> RingLayout:
    """The rings and window sizes of one eccentricity-pooling layer whose square input has side ``in_size``.

    Follows the paper's formula (module docstring): fovea radius ``round(fovea * deg2px / 2)``, ring step
    ``round(rf_quant * deg2px / 2)``, window ``rf_min + round(slope * (2 e - fovea * deg2px))``.
    """
    for name, value in (("in_size", in_size), ("rf_min", rf_min), ("deg2px", deg2px), ("stride", stride)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if fovea <= 0 or rf_quant <= 0 or slope < 0:
        raise ValueError(f"fovea and rf_quant must be > 0 and slope >= 0, got fovea={fovea}, rf_quant={rf_quant}, "
                         f"slope={slope}")
    out_size = (in_size + 1) // stride if stride > 1 else in_size
    ecc = round_number(fovea * deg2px / 2, rounding)
    if ecc > out_size / 2:
        return RingLayout(out_size, (2 * ecc,), (rf_min,))
    step = round_number(rf_quant * deg2px / 2, rounding)
    if step < 1:
        raise ValueError(f"rf_quant * deg2px / 2 must round to >= 1 pixel, got rf_quant={rf_quant}, deg2px={deg2px}")
    radii, sizes = [ecc], [rf_min]
    ecc += step
    while ecc < out_size / 2:
        radii.append(ecc)
        sizes.append(rf_min + round_number(slope * (2 * ecc - fovea * deg2px), rounding))
        ecc += step
    radii.append(ecc)
    sizes.append(rf_min + round_number(slope * (2 * ecc - fovea * deg2px), rounding))
    return RingLayout(out_size, tuple(radii), tuple(sizes))


def same_pool2d(x: torch.Tensor, kernel: int, stride: int = 2, mode: str = "avg") -> torch.Tensor:
    """Pooling with TensorFlow's "same" padding: output ``ceil(H / stride)``; padded cells never count.

    The average divides by the number of real input cells under the window; max pooling pads with ``-inf``.
    """
    h, w = x.shape[-2:]
    pads = []
    for size in (w, h):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    if mode == "max":
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)
    if mode != "avg":
        raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
    summed = F.avg_pool2d(F.pad(x, pads), kernel, stride, divisor_override=1)
    ones = torch.ones((1, 1, h, w), dtype=x.dtype, device=x.device)
    count = F.avg_pool2d(F.pad(ones, pads), kernel, stride, divisor_override=1)
    return summed / count


class EccentricityPool2d(nn.Module):
    """Pooling whose window grows with the distance from the map centre (the fixation), as in eccNET.

    Takes ``(B, C, H, W)``; a non-square map is zero-padded (centred) to a square first, as the release does.
    Returns ``(B, C, n, n)`` with ``n = (max(H, W) + 1) // stride``. ``slope=0`` with ``deg2px`` small enough
    gives ordinary pooling everywhere. See the module docstring for the formula.
    """

    def __init__(self, *, rf_min: int = 2, slope: float = 0.0, deg2px: int = 30, fovea: float = 4.0,
                 rf_quant: float = 1.0, stride: int = 2, mode: str = "avg", rounding: str = "half_even") -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
        round_number(0.0, rounding)
        self.rf_min, self.slope, self.deg2px, self.fovea = rf_min, slope, deg2px, fovea
        self.rf_quant, self.stride, self.mode, self.rounding = rf_quant, stride, mode, rounding

    def layout(self, in_size: int) -> RingLayout:
        """The ring layout used for a square input of side ``in_size``."""
        return ring_layout(in_size, rf_min=self.rf_min, slope=self.slope, deg2px=self.deg2px, fovea=self.fovea,
                           rf_quant=self.rf_quant, stride=self.stride, rounding=self.rounding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        side = max(h, w)
        if h != w:
            top, left = (side - h) // 2, (side - w) // 2
            x = F.pad(x, (left, side - w - left, top, side - h - top))
        layout = self.layout(side)
        if len(layout.rf_sizes) == 1:
            return same_pool2d(x, layout.rf_sizes[0], self.stride, self.mode)
        index = layout.region_index(x.device)
        out = torch.zeros((), dtype=x.dtype, device=x.device)
        for size in sorted(set(layout.rf_sizes)):
            regions = [i for i, s in enumerate(layout.rf_sizes) if s == size]
            keep = ((index >= regions[0]) & (index <= regions[-1])).to(x.dtype)
            out = out + keep * same_pool2d(x, size, self.stride, self.mode)
        return out

    def extra_repr(self) -> str:
        return (f"rf_min={self.rf_min}, slope={self.slope}, deg2px={self.deg2px}, fovea={self.fovea}, "
                f"stride={self.stride}, mode={self.mode!r}")
