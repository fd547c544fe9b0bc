"""HaloNet's blocked local attention as a mask.

Paper: Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones" (arXiv
2103.12731). Queries come from non-overlapping ``b x b`` blocks; keys from the block widened by a halo of
``h`` tokens on every side, a ``(b + 2h)``-wide window. HaloNet zero-pads at the image border and keeps the
padded keys in the softmax; as a mask over real tokens, keys outside the grid simply do not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._checks import Shape, int_or_ints, per_axis
from .axis import HaloAxis
from .separable import SeparableMask


@dataclass(frozen=True)
class HaloMask(SeparableMask):
    """Queries in ``block_size`` blocks see their block widened by ``halo_size`` on each side (per axis)."""

    block_size: int | tuple[int, ...]
    halo_size: int | tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_size", int_or_ints(self.block_size, "block_size"))
        object.__setattr__(self, "halo_size", int_or_ints(self.halo_size, "halo_size", minimum=0))

    def axis_rules(self, shape: Shape) -> tuple[HaloAxis, ...]:
        ndim = len(shape)
        blocks = per_axis(self.block_size, ndim, "block_size")
        halos = per_axis(self.halo_size, ndim, "halo_size", minimum=0)
        return tuple(HaloAxis(b, h) for b, h in zip(blocks, halos, strict=True))


def halo_mask(block_size: int | Sequence[int], halo_size: int | Sequence[int]) -> HaloMask:
    """HaloNet attention: ``block_size`` query blocks, keys from the block plus ``halo_size`` on each side."""
    return HaloMask(block_size, halo_size)
