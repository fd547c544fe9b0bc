"""MaxViT's multi-axis partitions as masks: window (block) attention and grid (dilated) attention.

Paper: Tu et al., "MaxViT: Multi-Axis Vision Transformer" (arXiv 2204.01697). Block attention partitions an
``(H, W)`` grid into non-overlapping ``P x P`` windows; grid attention gathers a ``G x G`` grid of tokens spaced
``(H / G, W / G)`` apart, so that tokens ``x`` and ``x'`` attend iff ``x = x' (mod H / G)`` on every axis.
Both need every axis length divisible by the partition size (pad the input first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._checks import Shape, int_or_ints, per_axis
from .axis import BlockAxis, GridAxis
from .separable import SeparableMask


@dataclass(frozen=True)
class WindowMask(SeparableMask):
    """Tokens attend within the same non-overlapping window of ``window_size`` per axis."""

    window_size: int | tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_size", int_or_ints(self.window_size, "window_size"))

    def axis_rules(self, shape: Shape) -> tuple[BlockAxis, ...]:
        return tuple(BlockAxis(p) for p in per_axis(self.window_size, len(shape), "window_size"))


@dataclass(frozen=True)
class GridMask(SeparableMask):
    """Tokens attend within a ``grid_size`` grid of tokens spaced ``length / grid_size`` apart per axis."""

    grid_size: int | tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid_size", int_or_ints(self.grid_size, "grid_size"))

    def axis_rules(self, shape: Shape) -> tuple[GridAxis, ...]:
        return tuple(GridAxis(g) for g in per_axis(self.grid_size, len(shape), "grid_size"))


def window_mask(window_size: int | Sequence[int]) -> WindowMask:
    """MaxViT block attention: non-overlapping windows of ``window_size`` tokens per axis."""
    return WindowMask(window_size)


def grid_mask(grid_size: int | Sequence[int]) -> GridMask:
    """MaxViT grid attention: ``grid_size`` tokens per axis, spaced ``length // grid_size`` apart."""
    return GridMask(grid_size)
