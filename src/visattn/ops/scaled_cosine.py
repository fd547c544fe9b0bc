"""Swin-V2's scaled cosine attention, functional.

Paper: Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution" (arXiv 2111.09883), eq. 2:

    Sim(q_i, k_j) = cos(q_i, k_j) / tau + B_ij,     1 / tau = exp(min(logit_scale, log 100)) per head,

then a softmax over keys and the weighted sum of values (:func:`scaled_cosine_attention`, on SDPA with the
normalised q, k and scale 1). ``logit_scale`` and the bias ``B`` come from :class:`visattn.nn.WindowAttentionV2`'s
parameters; :func:`visattn.ops.reference.attention` on the normalised, scaled q, k is the oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOGIT_SCALE_MAX", "cosine_logit_scale", "scaled_cosine_attention"]

LOGIT_SCALE_MAX = math.log(1.0 / 0.01)
"""Upper clamp of the learned log logit scale: the temperature tau stays >= 0.01."""


def cosine_logit_scale(logit_scale: Tensor) -> Tensor:
    """``1 / tau = exp(min(logit_scale, log 100))``, the per-head multiplier of the cosine similarity."""
    return torch.clamp(logit_scale, max=LOGIT_SCALE_MAX).exp()


def scaled_cosine_attention(q: Tensor, k: Tensor, v: Tensor, logit_scale: Tensor, bias: Tensor | None = None,
                            dropout_p: float = 0.0) -> Tensor:
    """``softmax(cos(q, k) * exp(min(logit_scale, log 100)) + bias) v`` (Swin-V2, arXiv 2111.09883, eq. 2).

    ``q, k, v``: ``(..., heads, N, head_dim)``; ``logit_scale``: ``(heads, 1, 1)``; ``bias`` broadcastable to
    the ``(..., heads, N, N)`` logits.
    """
    q = F.normalize(q, dim=-1) * cosine_logit_scale(logit_scale)
    return F.scaled_dot_product_attention(q, F.normalize(k, dim=-1), v, attn_mask=bias, dropout_p=dropout_p,
                                          scale=1.0)
