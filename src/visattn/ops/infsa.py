"""InfSA and Linear-InfSA, functional: spectrally normalised non-negative affinities.

Paper: Roffo et al., "Self-Attention And Beyond the Infinite: Towards Linear Transformers with Infinite
Self-Attention" (arXiv 2603.00175). Per head ``R = relu(q k^T / d)``, ``A = rho R / (||R||_F + 1e-6)``
(:func:`infsa_weights`; the output is ``A V``, O(N^2 d)); Linear-InfSA's attention vector ``a_j = relu(q_bar . k_j
/ d) / sum_l relu(q_bar . k_l / d)`` with the energy-weighted query summary ``q_bar = sum_t w_t q_t``
(:func:`linear_infsa_vector`, O(N d)). ``rho`` is a parameter of :mod:`visattn.nn.infsa`'s mixers.

Linear-InfSA has no causal recurrence (``q_bar`` pools every query before any key is read), so it reports no
recurrent state.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["infsa_weights", "linear_infsa_vector"]


def infsa_weights(q: Tensor, k: Tensor, rho: Tensor | float, mask: Tensor | None = None,
                  eps: float = 1e-6) -> Tensor:
    """``A = rho R / (||R||_F + eps)``, ``R = relu(q k^T / d)`` per head, ``(B, heads, N, N)``.

    ``mask`` (bool, True = attend, broadcastable to ``(B, heads, N, N)``) zeroes ``R`` where False, before the
    norm.
    """
    d = q.shape[-1]
    r = torch.relu((q * d ** -0.5) @ (k * d ** -0.5).transpose(-2, -1))
    if mask is not None:
        r = r * mask
    norm = torch.linalg.vector_norm(r, dim=(-2, -1), keepdim=True)
    return rho * r / (norm + eps)


def linear_infsa_vector(q: Tensor, k: Tensor, eps: float = 1e-6) -> Tensor:
    """Linear-InfSA's attention vector ``a`` ``(B, heads, N)``: ``relu(q_bar . k_j / d)`` normalised to sum 1."""
    d = q.shape[-1]
    energy = torch.linalg.vector_norm(q, dim=-1)
    w = energy / (energy.sum(dim=-1, keepdim=True) + eps * d ** 0.5)
    q_bar = (w.unsqueeze(-2) @ q).squeeze(-2)
    a = torch.relu((k @ q_bar.unsqueeze(-1)).squeeze(-1) / d)
    return a / (a.sum(dim=-1, keepdim=True) + eps)
