"""Mean attention distance on a token grid: how far, in patches, attention reaches.

"Remedying Target-Domain Astigmatism for Cross-Domain Few-Shot Object Detection", arXiv 2603.18541, measures
``d = (1/N) sum_i sum_j A_ij ||p_i - p_j||`` per layer, with ``p_i`` the grid position of token ``i`` in patch
units and ``N`` the number of grid queries; prefix tokens (class, registers) have no position and are left out.
The paper averages ``d`` over heads and images: ``mean_attention_distance(...).mean()`` for one layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..._checks import as_shape, num_tokens
from ._validate import square_last, tensor


def grid_positions(grid: int | Sequence[int], dtype: torch.dtype = torch.float32,
                   device: torch.device | None = None) -> Tensor:
    """Coordinates ``(N, len(grid))`` of the tokens of ``grid`` in row-major order, in patch units."""
    shape = as_shape(grid, "grid", max_dims=3)
    axes = [torch.arange(s, dtype=dtype, device=device) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def mean_attention_distance(
    probs: Tensor,
    grid: int | Sequence[int],
    num_prefix_tokens: int = 0,
    renormalize: bool = False,
) -> Tensor:
    """``d = (1/N) sum_ij A_ij ||p_i - p_j||`` over grid queries ``i`` and grid keys ``j``.

    Args:
        probs: self-attention probabilities ``(..., P + N, P + N)`` with ``N = prod(grid)`` (e.g.
            ``(B, heads, N', N')``).
        grid: the layout of the grid tokens, ``(L,)``, ``(H, W)`` or ``(T, H, W)``.
        num_prefix_tokens: ``P``, tokens in front of the grid; their rows and columns are dropped.
        renormalize: rescale each grid row to sum 1 over grid keys first (the mass on prefix keys is otherwise
            counted as distance 0, as in the paper's formula).

    Returns:
        ``(...)``: one distance per leading index, in patch units (multiply by the patch size for pixels).
    """
    probs = tensor(probs, "probs", min_dim=2)
    shape = as_shape(grid, "grid", max_dims=3)
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
    total = square_last(probs, "probs")
    tokens = num_tokens(shape)
    if total != num_prefix_tokens + tokens:
        raise ValueError(f"probs has {total} tokens but num_prefix_tokens + prod(grid) = {num_prefix_tokens} + "
                         f"{tokens} = {num_prefix_tokens + tokens} (grid {shape})")
    attn = probs[..., num_prefix_tokens:, num_prefix_tokens:]
    if renormalize:
        mass = attn.sum(dim=-1, keepdim=True)
        attn = torch.where(mass > 0, attn / torch.where(mass > 0, mass, 1.0), 0.0)
    positions = grid_positions(shape, dtype=torch.float64, device=probs.device)
    distance = torch.cdist(positions, positions, compute_mode="donot_use_mm_for_euclid_dist").to(probs.dtype)
    return (attn * distance).sum(dim=(-2, -1)) / tokens
