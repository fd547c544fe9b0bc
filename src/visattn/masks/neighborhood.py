"""Neighborhood attention masks in 1, 2 and 3 dimensions (NATTEN semantics).

Paper: Hassani et al., "Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the
Threadblock Level" (arXiv 2403.04690), and Neighborhood Attention Transformer (arXiv 2204.07143).
Each query sees the ``kernel_size`` nearest keys of its dilation group along every axis, the window shifted
inward at the borders so that a non-causal query always sees exactly ``prod(kernel_size)`` keys. The N-D mask
is the AND over axes of :class:`~visattn.masks.axis.NeighborhoodAxis`; see there for the per-axis equations.
``stride == kernel_size`` gives blocked (Swin-style) window attention; ``kernel_size = 1`` lets a token see
only itself along that axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._checks import Shape, bool_or_bools, int_or_ints, per_axis, per_axis_bool
from .axis import NeighborhoodAxis
from .separable import SeparableMask


@dataclass(frozen=True)
class NeighborhoodMask(SeparableMask):
    """Neighborhood attention over 1-3 spatial axes; per-axis arguments are an int/bool or one per axis."""

    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    dilation: int | tuple[int, ...] = 1
    is_causal: bool | tuple[bool, ...] = False

    max_dims = 3

    def __post_init__(self) -> None:
        for name in ("kernel_size", "stride", "dilation"):
            object.__setattr__(self, name, int_or_ints(getattr(self, name), name))
        object.__setattr__(self, "is_causal", bool_or_bools(self.is_causal, "is_causal"))

    def axis_rules(self, shape: Shape) -> tuple[NeighborhoodAxis, ...]:
        ndim = len(shape)
        kernel = per_axis(self.kernel_size, ndim, "kernel_size")
        stride = per_axis(self.stride, ndim, "stride")
        dilation = per_axis(self.dilation, ndim, "dilation")
        causal = per_axis_bool(self.is_causal, ndim, "is_causal")
        return tuple(NeighborhoodAxis(*args) for args in zip(kernel, stride, dilation, causal, strict=True))


def neighborhood_mask(
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    is_causal: bool | Sequence[bool] = False,
) -> NeighborhoodMask:
    """Neighborhood attention mask (NATTEN semantics) for 1-, 2- or 3-D token grids.

    The arguments come in NATTEN's order (``na2d(q, k, v, kernel_size, stride, dilation, is_causal)``), so
    ``neighborhood_mask(7, 2)`` is stride 2, as in NATTEN.

    Args:
        kernel_size: window length per axis (int for all axes, or one per axis), >= 1.
        stride: queries in groups of ``stride`` share one window per axis; ``stride <= kernel_size``.
        dilation: spacing between the keys of a window per axis; tokens only see their dilation group.
        is_causal: per axis, keys must not come after the query and the window ends at the query.
    """
    return NeighborhoodMask(kernel_size, stride, dilation, is_causal)
