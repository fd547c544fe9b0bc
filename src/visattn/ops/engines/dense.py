"""Dense engines: SDPA under the materialised bool mask, and the cached masks the dense engines read.

``out = softmax(q k^T * scale + bias, masked to -inf where the mask forbids) v``, 0 for a query that sees no key.
The ``N x N`` mask is built once per (mask, grid, prefix tokens, device) and kept (masks are immutable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..._cache import byte_cached
from ...masks import Mask, materialize, to_block_mask
from .sdpa import sdpa

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

__all__ = ["block_mask", "dense_mask", "sdpa_bool_mask"]


@byte_cached
def dense_mask(mask: Mask, shape: tuple[int, ...], num_prefix_tokens: int, device: torch.device) -> Tensor:
    """Cached :func:`~visattn.masks.materialize` (masks are immutable, so the result never goes stale)."""
    return materialize(mask, shape, num_prefix_tokens, device=device)


@byte_cached
def block_mask(mask: Mask, shape: tuple[int, ...], num_prefix_tokens: int, device: torch.device) -> BlockMask:
    """Cached :func:`~visattn.masks.to_block_mask`."""
    return to_block_mask(mask, shape, num_prefix_tokens, device=device)


def sdpa_bool_mask(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float | None = None,
                   dropout_p: float = 0.0, bias: Tensor | None = None) -> Tensor:
    """SDPA where query i sees key j iff ``allowed[..., i, j]``, plus an optional additive ``bias``.

    Rows that see no key (or whose bias is -inf everywhere they may look) give 0 instead of NaN, without a
    host-device sync.
    """
    if bias is None:
        empty = ~allowed.any(dim=-1, keepdim=True)
        attn_mask = allowed | empty
    else:
        attn_mask = bias.masked_fill(~allowed, float("-inf"))
        empty = torch.isneginf(attn_mask).all(dim=-1, keepdim=True)
        attn_mask = attn_mask.masked_fill(empty, 0.0)
    out = sdpa(q, k, v, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p)
    return out.masked_fill(empty, 0.0)
