"""DaViT's channel group attention, functional: tokens and channels swap roles.

Paper: Ding et al., "DaViT: Dual Attention Vision Transformers" (arXiv 2204.03645). Per group (head) of ``C_g``
channels, as in the released code and timm,

    A = softmax_row((k * s)^T v)   (C_g x C_g),     out = q A^T,     s = C_g^-1/2,

O(N C_g^2) per group. :func:`channel_weights` gives ``A`` (the oracle's input: ``out_n = A q_n`` token by token);
:func:`channel_attention` the output. The state that answers every query is ``(k s)^T v`` before the softmax,
``C_g x C_g`` per group (:func:`channel_state_bytes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .recurrent_state import state_bytes

__all__ = ["channel_attention", "channel_state_bytes", "channel_weights"]


def channel_weights(k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """DaViT channel attention weights ``softmax((k * scale)^T v)``: ``(B, heads, head_dim, head_dim)``."""
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax((k * scale).transpose(-2, -1) @ v, dim=-1)


def channel_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                      dropout_p: float = 0.0) -> Tensor:
    """DaViT channel group attention on ``(B, heads, N, head_dim)``: ``q softmax((k * scale)^T v)^T``.

    Every output token is the channel mix ``out_n = A q_n`` of its own query, with ``A`` (``head_dim x
    head_dim`` per group) computed from all tokens' keys and values; ``scale`` defaults to ``head_dim ** -0.5``.
    Cost O(N head_dim^2) per group.
    """
    weights = F.dropout(channel_weights(k, v, scale), p=dropout_p) if dropout_p else channel_weights(k, v, scale)
    return q @ weights.transpose(-2, -1)


def channel_state_bytes(batch_size: int, num_heads: int, head_dim: int, value_dim: int,
                        dtype: torch.dtype = torch.float32) -> int:
    """Bytes of ``(k s)^T v``: ``head_dim x Dv`` elements per group."""
    return state_bytes(head_dim * value_dim, batch_size, num_heads, dtype)
