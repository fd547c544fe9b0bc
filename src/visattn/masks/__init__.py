"""Which query may see which key: pure index arithmetic over a token grid, no tensors of data.

Every mask is a :class:`Mask`. Bind it to a grid ``shape`` (and ``num_prefix_tokens`` global tokens in front)
to get a FlexAttention ``mask_mod``, dense rows, the dense matrix (:func:`materialize`), the attended-pair
count and :func:`density` (never N x N at once), or a FlexAttention ``BlockMask`` (:func:`to_block_mask`).
Masks combine with ``&`` and ``|``.
"""

from .axial import AxialMask, StripMask, axial_mask, strip_mask
from .axis import (
    AxisRule,
    BlockAxis,
    CausalAxis,
    EqualAxis,
    FullAxis,
    GridAxis,
    HaloAxis,
    NeighborhoodAxis,
    SlidingAxis,
)
from .base import Mask, MaskMod, unravel
from .combine import AndMask, OrMask, and_masks, or_masks
from .evaluate import density, materialize, pair_count, to_block_mask
from .halo import HaloMask, halo_mask
from .neighborhood import NeighborhoodMask, neighborhood_mask
from .partition import GridMask, WindowMask, grid_mask, window_mask
from .radial import RadialMask, radial_mask
from .separable import SeparableMask
from .sequence import (
    CausalMask,
    FullMask,
    SequenceMask,
    SlidingWindowMask,
    causal_mask,
    full_mask,
    sliding_window_mask,
)

__all__ = [
    "AndMask",
    "AxialMask",
    "AxisRule",
    "BlockAxis",
    "CausalAxis",
    "CausalMask",
    "EqualAxis",
    "FullAxis",
    "FullMask",
    "GridAxis",
    "GridMask",
    "HaloAxis",
    "HaloMask",
    "Mask",
    "MaskMod",
    "NeighborhoodAxis",
    "NeighborhoodMask",
    "OrMask",
    "RadialMask",
    "SeparableMask",
    "SequenceMask",
    "SlidingAxis",
    "SlidingWindowMask",
    "StripMask",
    "WindowMask",
    "and_masks",
    "axial_mask",
    "causal_mask",
    "density",
    "full_mask",
    "grid_mask",
    "halo_mask",
    "materialize",
    "neighborhood_mask",
    "or_masks",
    "pair_count",
    "radial_mask",
    "sliding_window_mask",
    "strip_mask",
    "to_block_mask",
    "unravel",
    "window_mask",
]
