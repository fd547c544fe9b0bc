"""The per-query kernel: exact local attention in one fused C++ pass, each query's scores in registers.

Paper: Hassani et al., "Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the
Threadblock Level" (arXiv 2403.04690), fused neighborhood attention: each query's scores, softmax and weighted
sum in registers, without materialising scores, tiles or masks, over the per-axis key progressions of
:mod:`visattn.ops.engines.layout`. Every spatial query also sees the P prefix tokens.

``out_i = sum_{j in M(i)} softmax_j(scale * q_i . k_j) v_j``; exactly ``|M(i)|`` dot products per query. The
backward recomputes probabilities from the saved log-sum-exp: query-major for dQ, key-major for dK and dV over the
transposed progressions (the queries that see each key), so threads never write the same row and the result does
not depend on scheduling (deterministic). It also runs Sparsifiner's per-query key lists (:func:`index_forward`).

These functions run on checked CPU tensors; :mod:`visattn.ops.engines.kernel_ops` wraps them as custom operators.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..native import DTYPE_SUFFIX, call, strides
from .layout import LocalLayout

__all__ = ["index_forward", "local_backward", "local_forward"]


def local_forward(q: Tensor, k: Tensor, v: Tensor, layout: LocalLayout, prefix: int, scale: float
                  ) -> tuple[Tensor, Tensor]:
    """Output and log-sum-exp of the ``N - prefix`` grid queries (prefix keys included)."""
    b, h, n, dim = q.shape
    out = q.new_empty(b, h, n - prefix, v.shape[-1])
    lse = q.new_empty(b, h, n - prefix)
    shape = torch.tensor(layout.shape, dtype=torch.int64)
    call("local_attention", f"visattn_local_forward_{DTYPE_SUFFIX[q.dtype]}", q, k, v, out, lse, b, h, dim,
         v.shape[-1], strides(q), strides(k), strides(v), len(layout.shape), shape, *layout.forward, prefix, scale)
    return out, lse


def local_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, layout: LocalLayout,
                   prefix: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` (all N rows) of :func:`local_forward`'s grid rows ``out`` (and contiguous ``lse``) with
    gradient ``dout``: the kernel for the grid keys, dense products for what the grid queries add to the prefix
    keys."""
    b, h, n, dim = q.shape
    dout = dout.contiguous()
    delta = (dout * out).sum(-1)
    dq = q.new_empty(b, h, n - prefix, dim)
    dk = q.new_empty(b, h, n - prefix, dim)
    dv = q.new_empty(b, h, n - prefix, v.shape[-1])
    shape = torch.tensor(layout.shape, dtype=torch.int64)
    call("local_attention", f"visattn_local_backward_{DTYPE_SUFFIX[q.dtype]}", q, k, v, dout, lse, delta, dq, dk,
         dv, b, h, dim, v.shape[-1], strides(q), strides(k), strides(v), len(layout.shape), shape, *layout.forward,
         *layout.transposed, prefix, scale)
    if not prefix:
        return dq, dk, dv
    q_grid = q[:, :, prefix:]
    probs = torch.exp(scale * q_grid @ k[:, :, :prefix].transpose(-1, -2) - lse[..., None])
    dscores = probs * (dout @ v[:, :, :prefix].transpose(-1, -2) - delta[..., None])
    dk_prefix = scale * dscores.transpose(-1, -2) @ q_grid
    dv_prefix = probs.transpose(-1, -2) @ dout
    dq = torch.cat([torch.zeros_like(q[:, :, :prefix]), dq], dim=2)
    return dq, torch.cat([dk_prefix, dk], dim=2), torch.cat([dv_prefix, dv], dim=2)


def index_forward(q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float) -> Tensor:
    """``out_i = sum_{j in index[..., i, :]} softmax_j(scale * q_i . k_j) v_j`` for checked per-query key lists (a
    negative entry ends a list), without gathering keys."""
    b, h, rows, dim = q.shape
    out = q.new_empty(b, h, rows, v.shape[-1])
    call("local_attention", f"visattn_index_forward_{DTYPE_SUFFIX[q.dtype]}", q, k, v, out, index, rows,
         index.shape[-1], b, h, dim, v.shape[-1], strides(q), strides(k), strides(v), scale)
    return out
