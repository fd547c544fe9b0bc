"""The argument checks every masked-attention entry runs before choosing an engine."""

from __future__ import annotations

from torch import Tensor

from .._checks import Shape, as_shape, check_qkv, check_scale, check_tokens
from ..masks import Mask

__all__ = ["check_masked_call"]


def check_masked_call(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: int | tuple[int, ...],
                      num_prefix_tokens: int, scale: object) -> tuple[Shape, int, float | None]:
    """``(shape, num_prefix_tokens, scale)`` checked and normalised for ``q, k, v`` (``(B, heads, N, head_dim)``):
    a TypeError or ValueError naming the argument otherwise, before any engine or native code runs."""
    check_qkv(q, k, v)
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a visattn.masks.Mask, got {type(mask).__name__}")
    shape, prefix = mask.bind(as_shape(shape), num_prefix_tokens)
    check_tokens(q.shape[2], shape, prefix, "q")
    check_tokens(k.shape[2], shape, prefix, "k")
    return shape, prefix, check_scale(scale)
