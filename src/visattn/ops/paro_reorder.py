"""PAROAttention's pattern-aware token reordering: axis-order permutations, block metrics and calibration.

Paper: Zhao et al., "PAROAttention: Pattern-Aware ReOrdering for Efficient Sparse and Quantized Attention in
Visual Generation Models" (arXiv 2506.16054); code jamescsq47/PAROAtten (CUDA kernels; the offline calibration
is not in the released code, so the selection rule below follows the paper's text).

Tokens on a ``(T, H, W)`` grid are laid out row-major. A reordering lays them out with the axes in another order
(six orders for three axes): ``perm = arange(N).reshape(shape).permute(order).flatten()``, and the reordered
sequence is ``x[perm]``; ``x = y[inverse(perm)]`` undoes it exactly. Prefix tokens stay first and unmoved.

Per head the order is chosen from sample attention maps ``A`` (post-softmax) cut into ``block x block`` tiles:

    M_sparse = fraction of tiles with >= 90% of their entries below 1e-3         (higher = sparser)
    M_quant  = mean over tiles of max|A_tile| / mean|A_tile|                     (lower = easier to quantise)
    cost     = sparse_weight (1 - M_sparse) + quant_weight M_quant / max_orders(M_quant)

and the order of least cost wins. The paper names a weighted combination without fixing the weights or a
normalisation; we divide ``M_quant`` by its largest value over the candidate orders of that head so both terms
lie in [0, 1], and use weights 1 and 1. The static block bitmap keeps, in every query-block row of the reordered
mean map, the ``ceil(density n_blocks)`` key blocks of largest attention mass (the paper thresholds the
per-tile sums; a fixed count per row is that threshold taken per row, and lets execution batch the rows).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import Shape, as_shape

__all__ = [
    "ParoCalibration",
    "axis_orders",
    "block_bitmap",
    "block_metrics",
    "calibrate_orders",
    "inverse_permutation",
    "order_bitmaps",
    "reorder_permutation",
]

SMALL_VALUE = 1e-3
SPARSE_TILE_FRACTION = 0.9


def axis_orders(ndim: int) -> list[tuple[int, ...]]:
    """Every order of ``ndim`` axes, outermost first; the identity (row-major) order comes first."""
    return list(itertools.permutations(range(ndim)))


def reorder_permutation(shape: int | tuple[int, ...], order: tuple[int, ...], num_prefix_tokens: int = 0,
                        device: torch.device | str | None = None) -> Tensor:
    """``perm`` with ``x[..., perm, :]`` laying the grid out in axis ``order`` (prefix tokens first, unmoved)."""
    shape = as_shape(shape)
    if sorted(order) != list(range(len(shape))):
        raise ValueError(f"order must be a permutation of the {len(shape)} axes of shape={shape}, got {order!r}")
    grid = torch.arange(math.prod(shape), device=device).reshape(shape).permute(*order).reshape(-1)
    prefix = torch.arange(num_prefix_tokens, device=device)
    return torch.cat([prefix, grid + num_prefix_tokens])


def inverse_permutation(perm: Tensor) -> Tensor:
    """``inv`` with ``perm[inv] = inv[perm] = arange``: ``y[..., inv, :]`` undoes ``x[..., perm, :]``."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def _tiles(attn: Tensor, block: int) -> Tensor:
    """``(..., N, N)`` -> ``(..., nq, nk, block, block)`` tiles; a ragged edge is padded with NaN."""
    n = attn.shape[-1]
    pad = -n % block
    attn = torch.nn.functional.pad(attn, (0, pad, 0, pad), value=float("nan"))
    nb = (n + pad) // block
    return attn.unflatten(-1, (nb, block)).unflatten(-3, (nb, block)).transpose(-3, -2)


def block_metrics(attn: Tensor, block: int = 64) -> tuple[Tensor, Tensor]:
    """``(M_sparse, M_quant)`` of attention maps ``(..., N, N)``, each ``(...)``; ragged edge tiles count their
    real entries only."""
    tiles = _tiles(attn.abs(), block)
    real = ~tiles.isnan()
    count = real.sum((-2, -1))
    small = (tiles < SMALL_VALUE).sum((-2, -1))
    sparse = (small >= SPARSE_TILE_FRACTION * count).to(attn.dtype).mean((-2, -1))
    filled = tiles.nan_to_num(0.0)
    mean = filled.sum((-2, -1)) / count
    psi = filled.amax((-2, -1)) / mean.clamp_min(torch.finfo(attn.dtype).tiny)
    return sparse, psi.mean((-2, -1))


def block_bitmap(attn: Tensor, block: int, density: float) -> Tensor:
    """Bool ``(..., nq, nk)``: per query-block row, the ``ceil(density nk)`` key blocks of largest mass."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    mass = _tiles(attn, block).nan_to_num(0.0).sum((-2, -1))
    nk = mass.shape[-1]
    kept = min(nk, max(1, math.ceil(density * nk)))
    idx = mass.topk(kept, dim=-1)[1]
    return torch.zeros_like(mass, dtype=torch.bool).scatter(-1, idx, True)


@dataclass(frozen=True)
class ParoCalibration:
    """Calibration result: the chosen axis ``orders`` (one per head), their per-head ``costs`` for every candidate
    order ``(heads, n_orders)``, and the static ``bitmap`` ``(heads, nq, nk)`` of the reordered layout."""

    shape: Shape
    num_prefix_tokens: int
    block: int
    orders: tuple[tuple[int, ...], ...]
    costs: Tensor
    bitmap: Tensor


def calibrate_orders(attn_maps: Tensor, shape: int | tuple[int, ...], num_prefix_tokens: int = 0, block: int = 64,
                     density: float = 0.5, sparse_weight: float = 1.0, quant_weight: float = 1.0) -> ParoCalibration:
    """Choose per head the axis order of least cost (see module docstring) and build its block bitmap.

    Args:
        attn_maps: sample post-softmax attention maps ``(heads, N, N)`` or ``(samples, heads, N, N)``; the
            samples are averaged.
        shape: the token grid, e.g. ``(T, H, W)``; ``N = num_prefix_tokens + prod(shape)``.
        block: tile size (64 in the paper).
        density: fraction of key blocks kept per query-block row.
    """
    shape = as_shape(shape)
    if not isinstance(attn_maps, Tensor) or attn_maps.dim() not in (3, 4) or not attn_maps.is_floating_point():
        raise ValueError("attn_maps must be a floating (heads, N, N) or (samples, heads, N, N) tensor, got "
                         f"{tuple(attn_maps.shape) if isinstance(attn_maps, Tensor) else attn_maps!r}")
    maps = attn_maps if attn_maps.dim() == 4 else attn_maps.unsqueeze(0)
    n = num_prefix_tokens + math.prod(shape)
    if maps.shape[-1] != n or maps.shape[-2] != n:
        raise ValueError(f"attn_maps must be (..., N, N) with N = num_prefix_tokens + prod(shape) = {n}, "
                         f"got {tuple(attn_maps.shape)}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    for name, w in (("sparse_weight", sparse_weight), ("quant_weight", quant_weight)):
        if not w >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {w!r}")
    mean_map = maps.mean(0)
    orders = axis_orders(len(shape))
    sparse, quant = [], []
    for order in orders:
        perm = reorder_permutation(shape, order, num_prefix_tokens, maps.device)
        s, qm = block_metrics(maps[..., perm, :][..., perm], block)
        sparse.append(s.mean(0))
        quant.append(qm.mean(0))
    sparse_t, quant_t = torch.stack(sparse, -1), torch.stack(quant, -1)
    costs = sparse_weight * (1 - sparse_t) + quant_weight * quant_t / quant_t.amax(-1, keepdim=True)
    best = costs.argmin(-1).tolist()
    chosen = tuple(orders[i] for i in best)
    bitmap = order_bitmaps(mean_map, shape, chosen, num_prefix_tokens, block, density)
    return ParoCalibration(shape, num_prefix_tokens, block, chosen, costs, bitmap)


def order_bitmaps(mean_map: Tensor, shape: Shape, orders: tuple[tuple[int, ...], ...], num_prefix_tokens: int,
                  block: int, density: float) -> Tensor:
    """Bool ``(heads, nq, nk)``: each head's averaged map ``(heads, N, N)`` reordered by its axis order, then
    :func:`block_bitmap`. Used for one calibration and for the per-timestep masks of a fixed set of orders."""
    bitmaps = []
    for head, order in enumerate(orders):
        perm = reorder_permutation(shape, order, num_prefix_tokens, mean_map.device)
        bitmaps.append(block_bitmap(mean_map[head][perm][:, perm], block, density))
    return torch.stack(bitmaps)
