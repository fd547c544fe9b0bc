"""Axial and strip attention: attention along one axis at a time.

Axial attention (Ho et al., "Axial Attention in Multidimensional Transformers", arXiv 1912.12180; used by
MORPH) lets a token see the tokens on the same line along ``axis``: all coordinates on that axis, the same
coordinate on every other axis. Strip attention widens the line to a band: row strips of ``width`` rows
(every column), or column strips of ``width`` columns (every row); ``width = 1`` is axial attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import Shape
from .axis import AxisRule, BlockAxis, EqualAxis, FullAxis
from .separable import SeparableMask


@dataclass(frozen=True)
class AxialMask(SeparableMask):
    """Tokens see the tokens that differ from them only along ``axis`` (negative axes count from the end)."""

    axis: int

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {self.axis!r}")

    def check(self, shape: Shape) -> None:
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(f"axis must index one of the {len(shape)} axes of shape={shape}, got axis={self.axis}")

    def axis_rules(self, shape: Shape) -> tuple[AxisRule, ...]:
        self.check(shape)
        along = self.axis % len(shape)
        return tuple(FullAxis() if a == along else EqualAxis() for a in range(len(shape)))


@dataclass(frozen=True)
class StripMask(SeparableMask):
    """Row strips (``orientation="rows"``: bands of ``width`` rows, all columns) or column strips on a 2-D grid."""

    orientation: str
    width: int = 1

    max_dims = 2

    def __post_init__(self) -> None:
        if self.orientation not in ("rows", "columns"):
            raise ValueError(f"orientation must be 'rows' or 'columns', got {self.orientation!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be an int >= 1, got {self.width!r}")

    def check(self, shape: Shape) -> None:
        if len(shape) != 2:
            raise ValueError(f"strip masks need a 2-D shape (H, W), got shape={shape}")
        super().check(shape)

    def axis_rules(self, shape: Shape) -> tuple[AxisRule, ...]:
        band = BlockAxis(self.width, name="width")
        return (band, FullAxis()) if self.orientation == "rows" else (FullAxis(), band)


def axial_mask(axis: int) -> AxialMask:
    """Axial attention along ``axis`` of the token grid."""
    return AxialMask(axis)


def strip_mask(orientation: str = "rows", width: int = 1) -> StripMask:
    """Strip attention on a 2-D grid: bands of ``width`` rows (``"rows"``) or columns (``"columns"``)."""
    return StripMask(orientation, width)
