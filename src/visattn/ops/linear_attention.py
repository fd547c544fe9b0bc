"""Linear (kernel) attention, functional: ``softmax(q k^T)`` replaced by a feature-map inner product.

Paper: Katharopoulos et al., "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention"
(arXiv 2006.16236), Eq. 5 - 6:

    y_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps),

with ``phi(x) = elu(x) + 1`` (the paper's choice) or ``relu(x)``. Computing ``sum_j phi(k_j) v_j^T`` first costs
O(N d^2) time and O(N d + d^2) memory; no N x N matrix is formed. The causal form (Eq. 9 - 10) sums over
``j <= i`` only. It runs by chunks (:func:`kernel_attention`): inside a chunk of ``C`` tokens a small masked
``C x C`` matrix, across chunks a running ``d x d`` state (an exclusive prefix sum of per-chunk states), so time is
O(N C d + N d^2) and memory O(N C + N d^2 / C) -- O(N d) for ``C >= d``.

The non-causal form runs over blocks of at most :data:`ROW_BLOCK` tokens (:func:`key_sums`, :func:`row_blocks`):
the feature map of one block of keys is folded into the ``d x d`` state before the next is mapped, then each block
of queries is mapped and read out, so no ``N x d`` feature tensor is held and each block stays in cache. The blocks
are of equal size (:func:`block_bounds`), so a few tokens over a multiple of the block do not cost a whole extra
block of fixed overhead. Measured on 2 CPU threads, 4 heads of 32 (2026-12-05): at N = 65,536 blocks of 4,096 take
36 ms against 46 ms in one pass; at N <= 4,096 one pass is what runs (the earlier 2,048-token blocks split
N = 2,304 into 2,048 + 256 and made the time at 1,024 - 4,096 tokens bend away from ``O(N)``).

``eps`` (1e-6, as in the released ``fast-transformers`` code) keeps rows whose denominator is zero (``relu`` maps a
query with no positive entry to 0) finite: such a row outputs 0.

Oracle: :func:`kernel_weights`, the dense ``N x N`` weights (O(N^2)), beside the fast forms. Recurrent state:
``sum_j phi(k_j) v_j^T`` (``F x Dv``) and ``sum_j phi(k_j)`` (``F``) per head, :func:`linear_state_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .recurrent_state import state_bytes

__all__ = [
    "FEATURE_MAPS",
    "ROW_BLOCK",
    "block_bounds",
    "check_chunk_size",
    "kernel_attention",
    "kernel_weights",
    "key_sums",
    "linear_attention",
    "linear_state_bytes",
    "row_blocks",
]


def _elu_plus_one(x: Tensor) -> Tensor:
    """``elu(x) + 1`` as ``exp(min(x, 0)) + max(x, 0)``: the same function and gradient (1 for x >= 0, ``exp(x)``
    below; at 0 minimum and maximum each pass half) on the vectorised ``exp``. ``F.elu`` runs a scalar ``expm1`` on
    CPU, measured 9x slower (2.4 ms against 0.27 ms for 131,072 floats on one thread), which made it most of the
    linear mixer's time."""
    zero = x.new_zeros(())
    return torch.maximum(x, zero).add_(torch.exp(torch.minimum(x, zero)))


FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {"elu+1": _elu_plus_one, "relu": F.relu}
"""The positive feature maps of the linear attention baseline, by name."""


def check_chunk_size(chunk_size: int) -> int:
    """Check ``chunk_size`` is a positive int (tokens per chunk of the causal scan)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def _with_ones(v: Tensor) -> Tensor:
    """``v`` with a column of ones appended: the same products then give the numerator and the denominator."""
    return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)


ROW_BLOCK = 4096
"""Most tokens per block of the non-causal linear mixers' passes over keys and queries."""


def block_bounds(length: int, block_size: int = ROW_BLOCK) -> list[tuple[int, int]]:
    """``(start, stop)`` of the fewest equal blocks (sizes differing by at most one) of at most ``block_size``
    tokens covering ``range(length)``."""
    count = max(1, -(-length // block_size))
    return [(length * i // count, length * (i + 1) // count) for i in range(count)]


def key_sums(k: Tensor, v: Tensor, phi: Callable[[Tensor], Tensor],
             block_size: int = ROW_BLOCK) -> tuple[Tensor, Tensor]:
    """``sum_j phi(k_j) v_j^T`` ``(B, heads, F, Dv)`` and ``sum_j phi(k_j)`` ``(B, heads, F)``, one block of
    ``block_size`` keys at a time, so the ``(B, heads, N, F)`` features are never held at once."""
    kv = z = None
    for start, stop in block_bounds(k.shape[2], block_size):
        fk = phi(k[:, :, start:stop])
        block_kv, block_z = fk.transpose(-2, -1) @ v[:, :, start:stop], fk.sum(dim=-2)
        kv, z = (block_kv, block_z) if kv is None else (kv + block_kv, z + block_z)
    return kv, z


def row_blocks(fn: Callable[[Tensor], Tensor], x: Tensor, block_size: int = ROW_BLOCK) -> Tensor:
    """``fn`` applied to equal blocks of at most ``block_size`` tokens of ``x`` ``(B, heads, N, ...)``, concatenated
    along N."""
    if x.shape[2] <= block_size:
        return fn(x)
    return torch.cat([fn(x[:, :, start:stop]) for start, stop in block_bounds(x.shape[2], block_size)], dim=2)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, phi: Callable[[Tensor], Tensor], *, is_causal: bool = False,
                     chunk_size: int = 64, eps: float = 1e-6) -> Tensor:
    """``y_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)`` (``j <= i`` when causal).

    Non-causal by blocks of keys then of queries (:func:`key_sums`, :func:`row_blocks`); causal through
    :func:`kernel_attention`'s chunked scan.
    """
    if is_causal:
        return kernel_attention(phi(q), phi(k), v, is_causal=True, chunk_size=chunk_size, eps=eps)
    kv, z = key_sums(k, v, phi)
    z = z.unsqueeze(-1)

    def readout(q_block: Tensor) -> Tensor:
        fq = phi(q_block)
        return (fq @ kv) / (fq @ z + eps)

    return row_blocks(readout, q)


def _identity(x: Tensor) -> Tensor:
    return x


def kernel_attention(fq: Tensor, fk: Tensor, v: Tensor, *, is_causal: bool = False, chunk_size: int = 64,
                     eps: float = 1e-6) -> Tensor:
    """``y_i = fq_i^T (sum_j fk_j v_j^T) / (fq_i^T sum_j fk_j + eps)`` over ``j`` (``j <= i`` when causal).

    ``fq``, ``fk``: feature-mapped queries and keys ``(B, heads, N, F)``; ``v``: ``(B, heads, N, Dv)``. Never
    forms an N x N matrix: O(N F Dv) time non-causal; causal by chunks of ``chunk_size`` tokens (module docstring).
    """
    if not is_causal:
        return linear_attention(fq, fk, v, _identity, eps=eps)
    dv = v.shape[-1]
    out = _causal_scan(fq, fk, _with_ones(v), check_chunk_size(chunk_size))
    return out[..., :dv] / (out[..., dv:] + eps)


def _causal_scan(fq: Tensor, fk: Tensor, v1: Tensor, chunk_size: int) -> Tensor:
    """``sum_{j <= i} (fq_i . fk_j) v1_j`` by chunks: a masked C x C block inside, a prefix-summed state across."""
    b, h, n, f = fq.shape
    c = min(chunk_size, n)
    pad = (-n) % c
    if pad:
        fq, fk, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v1))
    m = (n + pad) // c
    fq, fk, v1 = (t.reshape(b, h, m, c, t.shape[-1]) for t in (fq, fk, v1))
    causal = torch.ones(c, c, dtype=torch.bool, device=fq.device).tril()
    intra = ((fq @ fk.transpose(-2, -1)) * causal) @ v1
    states = fk.transpose(-2, -1) @ v1
    before = F.pad(states.cumsum(dim=2)[:, :, :-1], (0, 0, 0, 0, 1, 0))
    out = intra + fq @ before
    return out.reshape(b, h, m * c, -1)[:, :, :n]


def kernel_weights(fq: Tensor, fk: Tensor, *, is_causal: bool = False, eps: float = 1e-6) -> Tensor:
    """The dense ``(B, heads, N, N)`` weights of :func:`kernel_attention`, ``w_ij = fq_i . fk_j / (sum_j ... + eps)``.

    The naive oracle, O(N^2): for tests, inspection (the lens) and distillation on small N, never the forward pass.
    """
    scores = fq @ fk.transpose(-2, -1)
    if is_causal:
        n = scores.shape[-1]
        scores = scores * torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
    return scores / (scores.sum(dim=-1, keepdim=True) + eps)


def linear_state_bytes(batch_size: int, num_heads: int, feature_dim: int, value_dim: int,
                       dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the recurrent state ``(sum_j phi(k_j) v_j^T, sum_j phi(k_j))``: ``B heads F (Dv + 1)`` elements."""
    return state_bytes(feature_dim * (value_dim + 1), batch_size, num_heads, dtype)
