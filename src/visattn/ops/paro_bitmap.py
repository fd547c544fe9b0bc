"""PAROAttention's block bitmaps stored as packed bits (Zhao et al., arXiv 2506.16054).

A calibrated bitmap says, per head and query block, which key blocks are computed: ``(heads, nq, nk)`` booleans,
one byte each in torch. :func:`pack_bitmap` stores key block ``j`` as bit ``j % 8`` of byte ``j // 8``
(``(..., nq, ceil(nk / 8))`` uint8, 8x smaller); :func:`unpack_bitmap` restores the booleans exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pack_bitmap", "unpack_bitmap"]


def _weights(device: torch.device) -> Tensor:
    return torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=device)


def pack_bitmap(bitmap: Tensor) -> Tensor:
    """Bool ``(..., nk)`` -> uint8 ``(..., ceil(nk / 8))``, key block ``j`` in bit ``j % 8`` of byte ``j // 8``."""
    if not isinstance(bitmap, Tensor) or bitmap.dtype != torch.bool or bitmap.dim() < 1:
        got = f"{bitmap.dtype} {tuple(bitmap.shape)}" if isinstance(bitmap, Tensor) else type(bitmap).__name__
        raise TypeError(f"bitmap must be a bool tensor with at least one dimension, got {got}")
    pad = (-bitmap.shape[-1]) % 8
    if pad:
        bitmap = torch.cat([bitmap, bitmap.new_zeros(*bitmap.shape[:-1], pad)], dim=-1)
    bits = bitmap.unflatten(-1, (-1, 8)).to(torch.uint8) * _weights(bitmap.device)
    return bits.sum(dim=-1, dtype=torch.uint8)


def unpack_bitmap(packed: Tensor, num_blocks: int) -> Tensor:
    """uint8 ``(..., ceil(num_blocks / 8))`` from :func:`pack_bitmap` -> bool ``(..., num_blocks)``."""
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() < 1:
        got = f"{packed.dtype} {tuple(packed.shape)}" if isinstance(packed, Tensor) else type(packed).__name__
        raise TypeError(f"packed must be a uint8 tensor with at least one dimension, got {got}")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0 \
            or packed.shape[-1] != -(-num_blocks // 8):
        raise ValueError(f"num_blocks must be an int with ceil(num_blocks / 8) = {packed.shape[-1]} (the packed "
                         f"bytes), got {num_blocks!r}")
    bits = packed.unsqueeze(-1).bitwise_and(_weights(packed.device)).ne(0)
    return bits.flatten(-2)[..., :num_blocks]
