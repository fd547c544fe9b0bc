"""ComplexFormer's complex multi-head attention scores, functional, as one real matmul.

Paper: "ComplexFormer: Disruptively Advancing Transformer Inference Ability via Head-Specific Complex Vector
Attention" (arXiv 2505.10222, withdrawn by its authors; code shaojintian/complexFormer):

    score_mn = sum_i r_q,m,i r_k,n,i cos(delta_i (theta_q,m,i - theta_k,n,i) + b_i + (m - n) g_i),

``g_i = base^(-2i/d)``, ``(r, theta)`` the polar form of the query/key halves read as ``d/2`` complex numbers.
By ``cos(a - c) = cos a cos c + sin a sin c`` it is the dot product of :func:`complex_features` (O(N d) memory, no
``(N, N, d/2)`` tensor); :func:`complex_scores` forms the ``N x N`` scores (the oracle's input). ``delta``, ``b``
are parameters of :class:`visattn.nn.ComplexAttentionMixer`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["complex_features", "complex_scores"]


def _polar(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    real, imag = x.chunk(2, dim=-1)
    return torch.sqrt(real * real + imag * imag + eps), torch.atan2(imag, real)


def complex_features(q: Tensor, k: Tensor, delta: Tensor, bias: Tensor, base: float = 10000.0,
                     eps: float = 1e-9) -> tuple[Tensor, Tensor]:
    """Features ``q', k'`` (same shapes as ``q, k``) with ``q'_m . k'_n`` = ComplexFormer's ``score_mn``.

    ``q'_m = [r_q cos phi_q, r_q sin phi_q]``, ``phi_q = delta theta_q + b + m g``; ``k'_n`` likewise with
    ``phi_k = delta theta_k + n g``. ``delta``, ``bias``: ``(heads, d/2)``.
    """
    n, d = q.shape[-2], q.shape[-1]
    half = d // 2
    freqs = base ** (-2.0 * torch.arange(half, device=q.device, dtype=q.dtype) / d)
    angle = torch.arange(n, device=q.device, dtype=q.dtype).unsqueeze(-1) * freqs
    delta = delta.to(q.dtype).unsqueeze(-2)
    r_q, theta_q = _polar(q, eps)
    r_k, theta_k = _polar(k, eps)
    phi_q = delta * theta_q + bias.to(q.dtype).unsqueeze(-2) + angle
    phi_k = delta * theta_k + angle
    return (torch.cat((r_q * torch.cos(phi_q), r_q * torch.sin(phi_q)), dim=-1),
            torch.cat((r_k * torch.cos(phi_k), r_k * torch.sin(phi_k)), dim=-1))


def complex_scores(q: Tensor, k: Tensor, delta: Tensor, bias: Tensor, base: float = 10000.0,
                   eps: float = 1e-9) -> Tensor:
    """ComplexFormer's scores ``(B, heads, N, N)`` by one matmul of :func:`complex_features`."""
    q_feat, k_feat = complex_features(q, k, delta, bias, base, eps)
    return q_feat @ k_feat.transpose(-2, -1)
