"""L2ViT's enhanced linear attention, functional.

Paper: Zheng et al., "The Linear Attention Resurrection in Vision Transformer" (arXiv 2501.16182), Eq. 6 as in the
released ``LinearAttention``: ``q, k = relu(q), relu(k)``,

    out_i = q_i (K^T V) tau_h / max(q_i . sum_j k_j, 100),

with a temperature ``tau_h`` per head (a parameter of :class:`visattn.nn.L2ViTLinearMixer`). O(N d^2) by blocks
(:func:`enhanced_linear_attention`); :func:`enhanced_linear_weights` is the dense oracle, O(N^2). State:
``relu(K)^T V`` and ``sum_j relu(k_j)``, ``d (Dv + 1)`` numbers per head (:func:`l2vit_state_bytes`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .linear_attention import key_sums, row_blocks
from .recurrent_state import state_bytes

__all__ = ["enhanced_linear_attention", "enhanced_linear_weights", "l2vit_state_bytes"]


def enhanced_linear_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor,
                              min_denominator: float = 100.0) -> Tensor:
    """``relu(q) (relu(K)^T V) tau / max(relu(q) . sum_j relu(k_j), min_denominator)``, O(N d^2).

    ``temperature`` broadcasts to ``(B, heads, 1, 1)`` (one value per head). Runs by blocks of keys then queries
    (:func:`~visattn.ops.linear_attention.key_sums`).
    """
    kv, z = key_sums(k, v, torch.relu)
    kv, z = kv * temperature, z.unsqueeze(-1)

    def readout(q_block: Tensor) -> Tensor:
        fq = torch.relu(q_block)
        return fq @ kv / (fq @ z).clamp_min(min_denominator)

    return row_blocks(readout, q)


def enhanced_linear_weights(q: Tensor, k: Tensor, temperature: Tensor, min_denominator: float = 100.0) -> Tensor:
    """The naive oracle: ``w_ij = tau relu(q_i) . relu(k_j) / max(relu(q_i) . sum relu(k), min_denominator)``,
    O(N^2); rows need not sum to 1 (they sum to ``tau`` times at most 1)."""
    q, k = torch.relu(q), torch.relu(k)
    scores = q @ k.transpose(-2, -1)
    return scores * temperature / scores.sum(dim=-1, keepdim=True).clamp_min(min_denominator)


def l2vit_state_bytes(batch_size: int, num_heads: int, head_dim: int, value_dim: int,
                      dtype: torch.dtype = torch.float32) -> int:
    """Bytes of ``relu(K)^T V`` and ``sum_j relu(k_j)``: ``d (Dv + 1)`` elements per head."""
    return state_bytes(head_dim * (value_dim + 1), batch_size, num_heads, dtype)
