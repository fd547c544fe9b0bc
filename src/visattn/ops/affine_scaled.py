"""Affine-Scaled Attention, functional: softmax weights scaled per query plus a uniform offset.

Paper: "Affine-Scaled Attention: Towards Flexible and Stable Transformer Attention" (arXiv 2602.23057). Per head
and query token ``i``, with per-token scales ``alpha_i`` and the running mean ``alpha_ma`` (both from
:class:`visattn.nn.AffineScaledMixer`'s parameters and buffer),

    out_i = sum_j [alpha_i softmax_j(q_i . k_j / sqrt d) + beta_i] v_j,     beta_i = (alpha_ma - alpha_i) / n_i,

``n_i`` the keys row ``i`` sees (all, the causal prefix, or those a boolean mask allows), so each row sums to
``alpha_ma``. :func:`affine_scaled_attention` runs on SDPA plus O(N d); :func:`affine_scaled_weights` is the dense
oracle, O(N^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from .engines.dense import sdpa_bool_mask

__all__ = ["affine_scaled_attention", "affine_scaled_weights"]


def _allowed(n: int, is_causal: bool, attn_mask: Tensor | None, device: torch.device) -> Tensor | None:
    allowed = torch.ones(n, n, dtype=torch.bool, device=device).tril() if is_causal else None
    if attn_mask is not None:
        allowed = attn_mask if allowed is None else allowed & attn_mask
    return allowed


def _check_mask(attn_mask: Tensor | None, q: Tensor) -> None:
    if attn_mask is None:
        return
    reference.check_self_attn_mask(attn_mask, q)
    if attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be bool (True = attend) for affine-scaled attention, whose offset is spread "
                        f"over the visible keys; got {attn_mask.dtype}")


def affine_scaled_weights(q: Tensor, k: Tensor, alpha: Tensor, alpha_ma: Tensor, is_causal: bool = False,
                          attn_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Dense ``(B, heads, N, N)`` weights ``alpha_i softmax(q k^T scale)_ij + beta_i`` over the visible keys.

    ``alpha``: ``(B, heads, N, 1)`` per-token scales; ``alpha_ma``: ``(heads,)``. O(N^2) memory.
    """
    _check_mask(attn_mask, q)
    n = q.shape[-2]
    allowed = _allowed(n, is_causal, attn_mask, q.device)
    probs = reference.attention(q, k, k, mask=allowed, scale=scale, return_weights=True)[1]
    visible = torch.ones_like(probs) if allowed is None else allowed.to(q.dtype).expand_as(probs)
    count = visible.sum(dim=-1, keepdim=True)
    beta = (alpha_ma.to(q.dtype).view(1, -1, 1, 1) - alpha) / count.clamp_min(1.0)
    return alpha * probs + beta * visible


def affine_scaled_attention(q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, alpha_ma: Tensor, is_causal: bool = False,
                            attn_mask: Tensor | None = None, scale: float | None = None,
                            dropout_p: float = 0.0) -> Tensor:
    """``alpha * softmax(q k^T scale) v + beta * sum_visible(v)``, ``beta = (alpha_ma - alpha) / n_i``.

    Unmasked and causal inputs use SDPA plus a sum (or prefix sum) of ``v``: O(N d) beyond SDPA. A boolean
    ``attn_mask`` adds one ``(N x N) @ v`` product for the visible sums. ``dropout_p`` applies to the softmax part.
    """
    _check_mask(attn_mask, q)
    n = q.shape[-2]
    ma = alpha_ma.to(q.dtype).view(1, -1, 1, 1)
    if attn_mask is None and not is_causal:
        probs_v = F.scaled_dot_product_attention(q, k, v, scale=scale, dropout_p=dropout_p)
        return alpha * probs_v + (ma - alpha) / n * v.sum(dim=-2, keepdim=True)
    if attn_mask is None:
        probs_v = F.scaled_dot_product_attention(q, k, v, scale=scale, dropout_p=dropout_p, is_causal=True)
        count = torch.arange(1, n + 1, device=q.device, dtype=q.dtype).unsqueeze(-1)
        return alpha * probs_v + (ma - alpha) / count * v.cumsum(dim=-2)
    allowed = _allowed(n, is_causal, attn_mask, q.device)
    probs_v = sdpa_bool_mask(q, k, v, allowed, scale, dropout_p)
    visible = allowed.to(q.dtype)
    count = visible.sum(dim=-1, keepdim=True)
    return alpha * probs_v + (ma - alpha) / count.clamp_min(1.0) * (visible @ v)
