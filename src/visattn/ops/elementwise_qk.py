"""Deconstructing Attention's non-approximate variant, functional: per-token scores from ``Q * K`` (elementwise).

Paper: Xue, Moosavi & Aletras, "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (arXiv 2510.11602): ``A = softmax((Q * K) 1^T / sqrt(d_h))`` with ``Q = SiLU(H W_Q)``. Token ``t`` gets
one score ``s_t = SiLU(q_t) . k_t / sqrt(d_h)``; with ``score_axis="key"`` every query pools the visible values
with weights ``softmax_j(s_j)`` (O(N d)); ``score_axis="query"`` reads the equation literally (row-constant
scores, so uniform weights: the (causal) mean of ``v``). See :class:`visattn.nn.ElementwiseQKMixer`.

Causal, the pooled softmax runs as a stable scan (:func:`elementwise_qk_attention`) whose recurrent state per head
is the running maximum, ``sum exp`` and ``sum exp v``: ``Dv + 2`` numbers (:func:`elementwise_qk_state_bytes`).
Oracle: :func:`elementwise_qk_weights`, the dense weights, O(N^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .linear_attention import check_chunk_size
from .recurrent_state import state_bytes

__all__ = ["SCORE_AXES", "elementwise_qk_attention", "elementwise_qk_state_bytes", "elementwise_qk_weights"]

SCORE_AXES = ("key", "query")


def _check_axis(score_axis: str) -> None:
    if score_axis not in SCORE_AXES:
        raise ValueError(f"score_axis must be one of {SCORE_AXES}, got {score_axis!r}")


def _causal(n: int, device: torch.device) -> Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def _elementwise_scores(q: Tensor, k: Tensor, query_activation: bool) -> Tensor:
    q = F.silu(q) if query_activation else q
    return (q * k).sum(dim=-1) / math.sqrt(q.shape[-1])


def elementwise_qk_weights(q: Tensor, k: Tensor, is_causal: bool = False, score_axis: str = "key",
                           query_activation: bool = True) -> Tensor:
    """The naive oracle: dense weights ``(..., N, N)`` of the non-approximate variant (O(N^2))."""
    _check_axis(score_axis)
    s = _elementwise_scores(q, k, query_activation)
    n = s.shape[-1]
    logits = s.unsqueeze(-2).expand(*s.shape[:-1], n, n) if score_axis == "key" \
        else s.unsqueeze(-1).expand(*s.shape, n)
    if is_causal:
        logits = logits.masked_fill(~_causal(n, s.device), float("-inf"))
    return torch.softmax(logits, dim=-1)


def _causal_key_softmax(s: Tensor, v: Tensor, chunk_size: int) -> Tensor:
    """``out_i = sum_{j<=i} exp(s_j) v_j / sum_{j<=i} exp(s_j)`` in O(N d) memory, stable for any range of ``s``.

    A running (max, sum exp, sum exp v) state carries earlier chunks; inside a chunk each row is referenced to its
    own running maximum, so no term overflows and the carried sum is never below ``exp(0)``.
    """
    n = s.shape[-1]
    run_max = s.new_full((*s.shape[:-1], 1), float("-inf"))
    run_den = s.new_zeros(*s.shape[:-1], 1)
    run_num = v.new_zeros(*v.shape[:-2], 1, v.shape[-1])
    out = []
    for start in range(0, n, chunk_size):
        sc, vc = s[..., start:start + chunk_size], v[..., start:start + chunk_size, :]
        reference = torch.maximum(torch.cummax(sc, dim=-1).values, run_max).detach()
        tril = _causal(sc.shape[-1], s.device)
        weights = torch.where(tril, sc.unsqueeze(-2) - reference.unsqueeze(-1), float("-inf")).exp()
        carry = (run_max - reference).exp()
        numerator = weights @ vc + carry.unsqueeze(-1) * run_num
        denominator = weights.sum(dim=-1) + carry * run_den
        out.append(numerator / denominator.unsqueeze(-1))
        new_max = torch.maximum(run_max, sc.amax(dim=-1, keepdim=True)).detach()
        decay = (run_max - new_max).exp()
        scaled = (sc - new_max).exp()
        run_num = decay.unsqueeze(-1) * run_num + scaled.unsqueeze(-2) @ vc
        run_den = decay * run_den + scaled.sum(dim=-1, keepdim=True)
        run_max = new_max
    return torch.cat(out, dim=-2)


def elementwise_qk_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, score_axis: str = "key",
                             query_activation: bool = True, chunk_size: int = 128) -> Tensor:
    """Output of the non-approximate variant in O(N d): one pooled vector (non-causal) or a stable running softmax
    over the prefix (causal, chunks of ``chunk_size`` tokens)."""
    _check_axis(score_axis)
    chunk_size = check_chunk_size(chunk_size)
    n = q.shape[-2]
    if score_axis == "query":
        if is_causal:
            return v.cumsum(dim=-2) / torch.arange(1, n + 1, device=v.device, dtype=v.dtype).unsqueeze(-1)
        return v.mean(dim=-2, keepdim=True).expand_as(v)
    s = _elementwise_scores(q, k, query_activation)
    if is_causal:
        return _causal_key_softmax(s, v, chunk_size)
    pooled = torch.softmax(s, dim=-1).unsqueeze(-2) @ v
    return pooled.expand(*v.shape[:-2], n, v.shape[-1])


def elementwise_qk_state_bytes(batch_size: int, num_heads: int, value_dim: int,
                               dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the causal scan's state (running max, ``sum exp``, ``sum exp v``): ``Dv + 2`` elements per head."""
    return state_bytes(value_dim + 2, batch_size, num_heads, dtype)
