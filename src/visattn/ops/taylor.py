"""2nd-order Taylor linear attention (as in Based), functional.

Paper: Xue, Moosavi & Aletras, "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (arXiv 2510.11602), the "approximate" variant, which follows Based (Arora et al., "Simple linear
attention language models balance the recall-throughput tradeoff", arXiv 2402.18668): softmax's ``exp(s)`` is
replaced by its 2nd-order Taylor expansion

    k(q, k) = 1 + s + s^2 / 2,   s = q . k / sqrt(f),

linearised by the feature map ``phi(x) = [1, x / f^(1/4), vec(x x^T) / sqrt(2 f)]`` (``1 + f + f^2`` features,
:func:`taylor_feature_map`) so that ``phi(q) . phi(k) = 1 + s + s^2/2`` (> 0, since ``1 + s + s^2/2 >= 1/2``):

    out_i = phi(q_i) sum_j phi(k_j) v_j^T / phi(q_i) . sum_j phi(k_j)        (causal: j <= i).

``f`` is the width of ``q`` and ``k`` here: Based projects them to a small feature dimension first (16 in its
released code; :class:`visattn.nn.TaylorMixer`'s ``feature_dim``), which keeps the recurrent state at
``(1 + f + f^2)(Dv + 1)`` numbers per head (:func:`taylor_state_bytes`). O(N f^2 Dv) time by chunks of tokens.

Oracle: :func:`taylor_weights`, the dense normalised kernel, O(N^2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .linear_attention import check_chunk_size
from .recurrent_state import state_bytes

__all__ = ["taylor_attention", "taylor_feature_map", "taylor_state", "taylor_state_bytes", "taylor_weights"]


def _causal(n: int, device: torch.device) -> Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def taylor_feature_map(x: Tensor) -> Tensor:
    """``phi(x) = [1, x / f^(1/4), vec(x x^T) / sqrt(2 f)]`` (``1 + f + f^2`` features) so that
    ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with ``s = q . k / sqrt(f)``."""
    d = x.shape[-1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2.0 * d)
    return torch.cat((torch.ones_like(x[..., :1]), x / d ** 0.25, outer), dim=-1)


def taylor_weights(q: Tensor, k: Tensor, is_causal: bool = False) -> Tensor:
    """The naive oracle: dense normalised weights ``(1 + s + s^2/2) / sum_l (...)``, ``s = q k^T / sqrt(f)``
    (O(N^2))."""
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    kernel = 1.0 + s + 0.5 * s * s
    if is_causal:
        kernel = kernel.masked_fill(~_causal(q.shape[-2], q.device), 0.0)
    return kernel / kernel.sum(dim=-1, keepdim=True)


def taylor_state(k: Tensor, v: Tensor, chunk_size: int = 128) -> tuple[Tensor, Tensor]:
    """The recurrent state after all keys: ``sum_j phi(k_j) v_j^T`` ``(..., 1 + f + f^2, Dv)`` and
    ``sum_j phi(k_j)`` ``(..., 1, 1 + f + f^2)``, ``chunk_size`` keys at a time."""
    chunk_size = check_chunk_size(chunk_size)
    features = 1 + k.shape[-1] + k.shape[-1] ** 2
    state = k.new_zeros(*k.shape[:-2], features, v.shape[-1])
    norm = k.new_zeros(*k.shape[:-2], 1, features)
    for start in range(0, k.shape[-2], chunk_size):
        phi_k = taylor_feature_map(k[..., start:start + chunk_size, :])
        state = state + phi_k.transpose(-2, -1) @ v[..., start:start + chunk_size, :]
        norm = norm + phi_k.sum(dim=-2, keepdim=True)
    return state, norm


def taylor_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, chunk_size: int = 128) -> Tensor:
    """2nd-order Taylor linear attention ``phi(q) (phi(K)^T V) / phi(q) . sum phi(K)`` in O(N f^2 Dv) time.

    Tokens are processed ``chunk_size`` at a time, so memory is O(chunk_size f^2 + f^2 Dv), never N x N or N x f^2.
    Causal: within a chunk the kernel ``1 + s + s^2/2`` is computed directly on the ``chunk x chunk`` block (masked),
    and earlier chunks enter through the running state ``sum_j phi(k_j) v_j^T`` and ``sum_j phi(k_j)``.
    """
    chunk_size = check_chunk_size(chunk_size)
    n = q.shape[-2]
    if not is_causal:
        state, norm = taylor_state(k, v, chunk_size)
        out = []
        for start in range(0, n, chunk_size):
            phi_q = taylor_feature_map(q[..., start:start + chunk_size, :])
            out.append((phi_q @ state) / (phi_q @ norm.transpose(-2, -1)))
        return torch.cat(out, dim=-2)
    state = q.new_zeros(*q.shape[:-2], 1 + q.shape[-1] + q.shape[-1] ** 2, v.shape[-1])
    norm = q.new_zeros(*q.shape[:-2], 1, state.shape[-2])
    out = []
    scale = 1.0 / math.sqrt(q.shape[-1])
    for start in range(0, n, chunk_size):
        qc, kc, vc = (t[..., start:start + chunk_size, :] for t in (q, k, v))
        s = (qc @ kc.transpose(-2, -1)) * scale
        kernel = (1.0 + s + 0.5 * s * s).masked_fill(~_causal(qc.shape[-2], q.device), 0.0)
        phi_q, phi_k = taylor_feature_map(qc), taylor_feature_map(kc)
        numerator = kernel @ vc + phi_q @ state
        denominator = kernel.sum(dim=-1, keepdim=True) + phi_q @ norm.transpose(-2, -1)
        out.append(numerator / denominator)
        state = state + phi_k.transpose(-2, -1) @ vc
        norm = norm + phi_k.sum(dim=-2, keepdim=True)
    return torch.cat(out, dim=-2)


def taylor_state_bytes(batch_size: int, num_heads: int, feature_dim: int, value_dim: int,
                       dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the recurrent state (:func:`taylor_state`): ``(1 + f + f^2)(Dv + 1)`` elements per head."""
    return state_bytes((1 + feature_dim + feature_dim ** 2) * (value_dim + 1), batch_size, num_heads, dtype)
