"""Exact local attention in one fused C++ pass for masks whose per-axis key sets are arithmetic progressions.

Paper: Hassani et al., "Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the
Threadblock Level" (arXiv 2403.04690), fused neighborhood attention: each query's scores, softmax and weighted
sum in registers, without materialising scores, tiles or masks. Along every axis ``a`` the keys a query
coordinate ``x`` sees are ``start_a[x] + i * step_a[x]`` for ``i < count_a[x]``; that covers neighborhood
(dilation is the step), window, grid, halo, axial, strip and sliding-window masks. Every spatial query also sees
the P prefix tokens, which attend densely (plain SDPA).

``out_i = sum_{j in M(i)} softmax_j(scale * q_i . k_j) v_j``; exactly ``|M(i)|`` dot products per query. The
backward pass recomputes probabilities from the saved log-sum-exp: query-major for dQ, key-major for dK and dV
over the transposed progressions (the queries that see each key), so threads never write the same row.

The kernel is built on first use (:mod:`visattn.ops.native`); :func:`local_attention` returns None where it
cannot run (no compiler, non-CPU tensors, dtypes other than float32/float64, attention dropout, tracing under
``torch.compile``, or a mask that is not a progression per axis). ``masked_attention`` trains progression masks on
the fused tile kernel's backward (:mod:`visattn.ops.tile_kernel`), measured 1.05-2.5x faster than this kernel
(2-D and 1-D neighborhoods), except where tiles share keys and that backward would run on more than
``tile_kernel.MAX_GRADIENT_COPIES`` threads or hold more than ``tile_kernel.GRADIENT_COPY_BYTES`` of per-thread
gradient copies: this kernel needs none. It also serves direct calls and Sparsifiner's per-query
key lists (:func:`index_attention`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import Shape
from ...masks import Mask, SeparableMask, SlidingWindowMask
from ...masks.axis import AxisRule, Progression
from ..native import DTYPE_SUFFIX, call, native_library, needs_grad, row_major, strides, supported

__all__ = ["LocalLayout", "axis_progression", "index_attention", "local_attention", "local_layout",
           "transposed_progression"]

MAX_DIMS = 4
TABLE_MAX_LENGTH = 4096
TRANSPOSE_MAX_PAIRS = 1 << 25


def progression_table(progression: Progression, length: int) -> np.ndarray:
    """The bool ``[L, L]`` table (query coordinate, key coordinate) that a progression describes."""
    start, count, step = progression
    offset = np.arange(length)[None, :] - start[:, None]
    return (offset >= 0) & (offset % step[:, None] == 0) & (offset // step[:, None] < count[:, None])


def axis_progression(table: np.ndarray) -> Progression | None:
    """``(start, count, step)`` per row of a bool ``[L, L]`` table whose true columns form an arithmetic
    progression in every row; None if some row's do not."""
    length = table.shape[1]
    count = table.sum(1)
    first = np.where(count > 0, table.argmax(1), 0)
    last = np.where(count > 0, length - 1 - table[:, ::-1].argmax(1), 0)
    step = np.where(count > 1, (last - first) // np.maximum(count - 1, 1), 1)
    progression = (first.astype(np.int64), count.astype(np.int64), step.astype(np.int64))
    return progression if np.array_equal(progression_table(progression, length), table) else None


def transposed_progression(progression: Progression, length: int) -> Progression | None:
    """The progressions of the queries that see each key (None if they are not progressions, or the axis has
    more than ``TRANSPOSE_MAX_PAIRS`` pairs)."""
    start, count, step = progression
    if int(count.sum()) > TRANSPOSE_MAX_PAIRS:
        return None
    queries = np.repeat(np.arange(length), count)
    rank = np.arange(len(queries)) - np.repeat(np.cumsum(count) - count, count)
    keys = np.repeat(start, count) + rank * np.repeat(step, count)
    order = np.argsort(keys, kind="stable")
    keys, queries = keys[order], queries[order]
    t_count = np.bincount(keys, minlength=length)
    offsets = np.cumsum(t_count) - t_count
    t_first = np.where(t_count > 0, queries[np.minimum(offsets, len(queries) - 1)], 0)
    t_last = np.where(t_count > 0, queries[np.maximum(offsets + t_count - 1, 0)], 0)
    t_step = np.where(t_count > 1, (t_last - t_first) // np.maximum(t_count - 1, 1), 1)
    t_rank = np.arange(len(queries)) - np.repeat(offsets, t_count)
    if not np.array_equal(queries, t_first[keys] + t_rank * t_step[keys]):
        return None
    return t_first.astype(np.int64), t_count.astype(np.int64), t_step.astype(np.int64)


def _axis_rules(mask: Mask, shape: Shape) -> tuple[AxisRule, ...] | None:
    if isinstance(mask, SeparableMask):
        return tuple(mask.axis_rules(shape))
    if isinstance(mask, SlidingWindowMask):
        return (mask.rule(),)
    return None


def _rule_progression(rule: AxisRule, length: int) -> Progression | None:
    progression = rule.progression(length)
    if progression is None and length <= TABLE_MAX_LENGTH:
        progression = axis_progression(rule.table(length).numpy())
    return progression


def _pack(parts: list[Progression]) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.from_numpy(np.ascontiguousarray(np.concatenate([p[i] for p in parts]))) for i in range(3))


@dataclass(frozen=True, eq=False)
class LocalLayout:
    """The per-axis progressions of a mask on a grid (``shape``; one axis of ``prod(shape)`` tokens for a
    sliding window), kept as numpy arrays and packed into int64 tensors concatenated over axes for the kernel."""

    shape: Shape
    axes: tuple[Progression, ...]

    @functools.cached_property
    def forward(self) -> tuple[Tensor, Tensor, Tensor]:
        return _pack(list(self.axes))

    @functools.cached_property
    def transposed(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """The queries that see each key, per axis; None where they are not progressions (no backward)."""
        parts = [transposed_progression(p, length) for p, length in zip(self.axes, self.shape, strict=True)]
        return None if any(p is None for p in parts) else _pack(parts)

    @property
    def max_keys(self) -> int:
        """Most keys any spatial query sees (prefix tokens not counted)."""
        return math.prod(int(p[1].max()) for p in self.axes)

    @property
    def pairs(self) -> int:
        """Attended (query, key) pairs among the spatial tokens, per batch and head."""
        return math.prod(int(p[1].sum()) for p in self.axes)


@functools.lru_cache(maxsize=64)
def local_layout(mask: Mask, shape: Shape) -> LocalLayout | None:
    """The kernel layout of ``mask`` on ``shape``; None if the mask is not a progression along every axis."""
    if isinstance(mask, SlidingWindowMask):
        shape = (math.prod(shape),)
    rules = _axis_rules(mask, shape)
    if rules is None or len(shape) > MAX_DIMS:
        return None
    axes = [_rule_progression(rule, length) for rule, length in zip(rules, shape, strict=True)]
    return None if any(p is None for p in axes) else LocalLayout(shape, tuple(axes))


def _kernel_forward(q: Tensor, k: Tensor, v: Tensor, layout: LocalLayout, prefix: int, scale: float
                    ) -> tuple[Tensor, Tensor]:
    b, h, n, dim = q.shape
    out = q.new_empty(b, h, n - prefix, v.shape[-1])
    lse = q.new_empty(b, h, n - prefix)
    shape = torch.tensor(layout.shape, dtype=torch.int64)
    call("local_attention", f"visattn_local_forward_{DTYPE_SUFFIX[q.dtype]}", q, k, v, out, lse, b, h, dim,
         v.shape[-1], strides(q), strides(k), strides(v), len(layout.shape), shape, *layout.forward, prefix, scale)
    return out, lse


def _kernel_backward(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, lse: Tensor, delta: Tensor,
                     layout: LocalLayout, prefix: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    b, h, n, dim = q.shape
    dq = q.new_empty(b, h, n - prefix, dim)
    dk = q.new_empty(b, h, n - prefix, dim)
    dv = q.new_empty(b, h, n - prefix, v.shape[-1])
    shape = torch.tensor(layout.shape, dtype=torch.int64)
    call("local_attention", f"visattn_local_backward_{DTYPE_SUFFIX[q.dtype]}", q, k, v, dout, lse, delta, dq, dk,
         dv, b, h, dim, v.shape[-1], strides(q), strides(k), strides(v), len(layout.shape), shape, *layout.forward,
         *layout.transposed, prefix, scale)
    return dq, dk, dv


class _LocalAttention(torch.autograd.Function):
    """Spatial rows of local attention (prefix keys included); the prefix rows are plain SDPA outside."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, layout: LocalLayout, prefix: int, scale: float) -> Tensor:
        out, lse = _kernel_forward(q, k, v, layout, prefix, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.prefix, ctx.scale = layout, prefix, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        prefix, scale = ctx.prefix, ctx.scale
        dout = dout.contiguous()
        delta = (dout * out).sum(-1)
        dq_s, dk_s, dv_s = _kernel_backward(q, k, v, dout, lse, delta, ctx.layout, prefix, scale)
        if not prefix:
            return dq_s, dk_s, dv_s, None, None, None
        q_s = q[:, :, prefix:]
        probs = torch.exp(scale * q_s @ k[:, :, :prefix].transpose(-1, -2) - lse[..., None])
        dscores = probs * (dout @ v[:, :, :prefix].transpose(-1, -2) - delta[..., None])
        # the kernel's dQ already covers the prefix keys; their dK, dV from the spatial queries are computed here
        dk_p = scale * dscores.transpose(-1, -2) @ q_s
        dv_p = probs.transpose(-1, -2) @ dout
        dq = torch.cat([torch.zeros_like(q[:, :, :prefix]), dq_s], dim=2)
        return dq, torch.cat([dk_p, dk_s], dim=2), torch.cat([dv_p, dv_s], dim=2), None, None, None


def index_attention(q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float | None = None) -> Tensor | None:
    """``out_i = sum_{j in index[..., i, :]} softmax_j(scale * q_i . k_j) v_j`` for per-query key lists (token
    indices into k; a negative entry ends a list), in the kernel's row loop without gathering keys: Sparsifiner's
    top-k execution. ``q``: ``(B, heads, Nq, d)``, ``k, v``: ``(B, heads, N, d)``, ``index``: ``(B, heads, Nq, kk)``
    int64. None where the kernel cannot run (autograd, see the module docstring)."""
    if not supported(q, k, v) or needs_grad(q, k, v) or torch.compiler.is_compiling():
        return None
    if native_library("local_attention") is None:
        return None
    if index.dtype != torch.int64 or tuple(index.shape[:3]) != tuple(q.shape[:3]):
        raise ValueError(f"index must be int64 of shape (B, heads, Nq, kk) with (B, heads, Nq)={tuple(q.shape[:3])}, "
                         f"got {index.dtype} {tuple(index.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v = row_major(q), row_major(k), row_major(v)
    index = index.contiguous()
    b, h, rows, dim = q.shape
    out = q.new_empty(b, h, rows, v.shape[-1])
    call("local_attention", f"visattn_index_forward_{DTYPE_SUFFIX[q.dtype]}", q, k, v, out, index, rows,
         index.shape[-1], b, h, dim, v.shape[-1], strides(q), strides(k), strides(v), scale)
    return out


def local_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, num_prefix_tokens: int = 0,
                    scale: float | None = None, dropout_p: float = 0.0) -> Tensor | None:
    """Masked attention through the fused local kernel, or None where it cannot run (see the module docstring).

    Args: as :func:`~visattn.ops.masked_attention` with a checked, bound ``shape`` and ``num_prefix_tokens``.
    """
    if dropout_p or not supported(q, k, v) or torch.compiler.is_compiling():
        return None
    if native_library("local_attention") is None:
        return None
    layout = local_layout(mask, shape)
    if layout is None:
        return None
    if needs_grad(q, k, v) and layout.transposed is None:
        return None
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v = row_major(q), row_major(k), row_major(v)
    prefix = num_prefix_tokens
    grid_out = _LocalAttention.apply(q, k, v, layout, prefix, scale)
    if not prefix:
        return grid_out
    prefix_out = F.scaled_dot_product_attention(q[:, :, :prefix], k, v, scale=scale)
    return torch.cat([prefix_out, grid_out], dim=2)
