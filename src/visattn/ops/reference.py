"""The naive dense attention every fast path in visattn is tested against.

``softmax(q k^T * scale + bias) v`` with the whole ``[N, M]`` score matrix in memory, written for clarity,
in any floating dtype (computed in the dtype given). Rows whose keys are all masked return 0, never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_qkv


def check_attn_mask(mask: Tensor, batch: int, heads: int, n_q: int, n_k: int, name: str = "mask") -> None:
    """Check a bool (True = attend) or float (additive) mask broadcasts to ``(B, heads, Nq, Nk)``."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name} must be bool (True = attend) or floating point (additive), got {mask.dtype}")
    target = (batch, heads, n_q, n_k)
    if mask.dim() > 4 or any(m not in (1, t) for m, t in zip(mask.shape[::-1], target[::-1], strict=False)):
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to (B, heads, Nq, Nk)={target}")


def check_self_attn_mask(attn_mask: Tensor | None, q: Tensor, name: str = "attn_mask") -> None:
    """Check an optional self-attention mask against ``q``'s ``(B, heads, N)``: see :func:`check_attn_mask`."""
    if attn_mask is not None:
        batch, heads, n, _ = q.shape
        check_attn_mask(attn_mask, batch, heads, n, n, name)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Naive dense softmax attention.

    ``out = softmax(q k^T * scale + mask) v`` with ``scale = head_dim ** -0.5`` by default.

    Args:
        q: ``(B, heads, Nq, head_dim)``; k: ``(B, heads, Nk, head_dim)``; v: ``(B, heads, Nk, head_dim_v)``.
        mask: bool (True = the query may see the key) or additive float, broadcastable to
            ``(B, heads, Nq, Nk)``.
        scale: logit scale.
        return_weights: also return the attention weights ``(B, heads, Nq, Nk)``.
    """
    check_qkv(q, k, v)
    batch, heads, n_q, _ = q.shape
    n_k = k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        check_attn_mask(mask, batch, heads, n_q, n_k)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    empty = torch.isneginf(scores.amax(dim=-1, keepdim=True))
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    out = weights @ v
    return (out, weights) if return_weights else out
