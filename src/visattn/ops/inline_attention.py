"""InLine attention, functional: injective linear attention (rows of the weights sum to 1 by a mean subtraction).

Paper: Han et al., "Bridging the Divide: Reconsidering Softmax and Linear Attention" (arXiv 2412.06590), Eq. 5:

    InL_ij = phi(q_i)^T phi(k_j) s / N - (1 / N) sum_s phi(q_i)^T phi(k_s) s / N + 1 / N,   s = d^-1/2,

computed in O(N d^2) as ``y_i = phi(q_i) (phi(K)^T V) s / N + (1 - s phi(q_i) . mean_j phi(k_j)) mean_j v_j``
(:func:`inline_attention`); :func:`inline_weights` is the dense oracle, O(N^2). The state that answers every query
is ``phi(K)^T V`` (``d x Dv``), ``mean phi(k)`` (``d``) and ``mean v`` (``Dv``): :func:`inline_state_bytes`.
The local residual has parameters and lives in :class:`visattn.nn.InLineMixer`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .linear_attention import key_sums, row_blocks
from .recurrent_state import state_bytes

__all__ = ["INLINE_KERNELS", "inline_attention", "inline_state_bytes", "inline_weights"]


def _exp_kernel(x: Tensor) -> Tensor:
    return (0.2 * x).exp()


INLINE_KERNELS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "relu": F.relu,
    "leakyrelu": F.leaky_relu,
    "exp": _exp_kernel,
}
"""InLine's kernel functions ``phi`` by name (the released code's ``kernel_func`` options)."""


def inline_attention(q: Tensor, k: Tensor, v: Tensor, kernel: str = "identity") -> Tensor:
    """``y = phi(q) (phi(K)^T V) s / N + (1 - s phi(q) . mean(phi(K))) mean(V)``, ``s = d^-1/2``, ``phi`` =
    :data:`INLINE_KERNELS` ``[kernel]``: O(N d^2), by blocks of keys then queries; rows of the weights sum to 1."""
    phi = INLINE_KERNELS[kernel]
    n, scale = k.shape[-2], q.shape[-1] ** -0.5
    kv, z = key_sums(k, v, phi)
    kv, mean_k, mean_v = kv * (scale / n), (z / n).unsqueeze(-1), v.mean(dim=-2, keepdim=True)

    def readout(q_block: Tensor) -> Tensor:
        fq = phi(q_block)
        return fq @ kv + (1.0 - scale * (fq @ mean_k)) * mean_v

    return row_blocks(readout, q)


def inline_weights(fq: Tensor, fk: Tensor) -> Tensor:
    """The dense InLine weights ``(s / N)(fq_i . fk_j - fq_i . mean(fk)) + 1 / N``, O(N^2), rows summing to 1."""
    n, scale = fk.shape[-2], fq.shape[-1] ** -0.5
    return (scale / n) * (fq @ fk.transpose(-2, -1) - fq @ fk.mean(dim=-2).unsqueeze(-1)) + 1.0 / n


def inline_state_bytes(batch_size: int, num_heads: int, head_dim: int, value_dim: int,
                       dtype: torch.dtype = torch.float32) -> int:
    """Bytes of ``phi(K)^T V``, ``mean phi(k)`` and ``mean v``: ``d (Dv + 1) + Dv`` elements per head."""
    return state_bytes(head_dim * (value_dim + 1) + value_dim, batch_size, num_heads, dtype)
