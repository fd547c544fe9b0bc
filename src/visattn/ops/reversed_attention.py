"""DependencyViT's reversed attention, functional: children send messages to the parents they choose.

Paper: Ding et al., "Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention"
(arXiv 2304.03282). Per head ``h``, with ``A_F = softmax(q k^T d^-1/2)`` (row ``j``: the parent distribution child
``j`` chooses), the head selector ``p`` ``(B, heads, N)`` and the message ``m`` ``(B, N)``:

    A_R[i, j] = A_F[j, i] * p_h,j * m_j,     out = A_R V.

:func:`reversed_weights` forms ``A_R`` (the oracle); :func:`reversed_attention` computes ``A_F^T (p m V)``. ``p`` and
``m`` come from parameters of :class:`visattn.nn.ReversedMixer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["reversed_attention", "reversed_weights"]


def _check_routing(q: Tensor, head_weights: Tensor, message: Tensor) -> None:
    b, h, n, _ = q.shape
    if head_weights.shape != (b, h, n):
        raise ValueError(f"head_weights must be shaped (B, heads, N)={(b, h, n)}, got {tuple(head_weights.shape)}")
    if message.shape != (b, n):
        raise ValueError(f"message must be shaped (B, N)={(b, n)}, got {tuple(message.shape)}")


def reversed_weights(q: Tensor, k: Tensor, head_weights: Tensor, message: Tensor, scale: float | None = None,
                     dropout_p: float = 0.0) -> Tensor:
    """``A_R[b, h, i, j] = softmax(q k^T scale)[b, h, j, i] * head_weights[b, h, j] * message[b, j]``."""
    _check_routing(q, head_weights, message)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    forward = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
    if dropout_p:
        forward = F.dropout(forward, p=dropout_p)
    return forward.transpose(-2, -1) * (head_weights * message.unsqueeze(1)).unsqueeze(-2)


def reversed_attention(q: Tensor, k: Tensor, v: Tensor, head_weights: Tensor, message: Tensor,
                       scale: float | None = None, dropout_p: float = 0.0) -> Tensor:
    """``A_R v`` computed as ``A_F^T (p m v)``: the sender weights scale ``v`` (O(N d)) before the transposed
    product, so the ``(N x N)`` matrix is never rescaled. O(N^2) time and memory (A_F is materialised: its
    transpose is not a softmax over keys, so SDPA does not apply)."""
    _check_routing(q, head_weights, message)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    forward = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
    if dropout_p:
        forward = F.dropout(forward, p=dropout_p)
    return forward.transpose(-2, -1) @ (v * (head_weights * message.unsqueeze(1)).unsqueeze(-1))
