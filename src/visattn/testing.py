"""Helpers for testing token mixers: random inputs in the layout every visattn op takes."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_qkv"]


def random_qkv(batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype = torch.float64,
               seed: int = 0, contiguous: bool = True, scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded standard-normal ``q, k, v`` of shape ``(batch, heads, tokens, head_dim)``, times ``scale``.

    ``contiguous=False`` returns transposed views of ``(batch, tokens, heads, head_dim)`` tensors, the layout that
    a fused qkv projection produces, to exercise strided inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    if contiguous:
        shape = (batch, heads, tokens, head_dim)
        return tuple(scale * torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3))
    shape = (batch, tokens, heads, head_dim)
    return tuple((scale * torch.randn(shape, generator=gen, dtype=dtype)).transpose(1, 2) for _ in range(3))
