"""Inference calls of the progression kernels without the custom-operator dispatcher.

:func:`~visattn.ops.engines.kernel_ops.progression_attention` is a ``torch.library`` custom operator so that
autograd and ``torch.compile`` see the kernels. In eager inference that costs, on every call of a tiny layer, the
dispatcher's round trip (autograd and backend redispatch, schema checks of the returned tensors), the operator's
checks of its arguments, a tile list lookup and a checked ctypes conversion of every argument: on an 8 x 8 grid
about three times the kernel's own work (one thread, ``benchmarks/fixed_cost.py``). :func:`progression_forward`
computes the same rows with the same kernel, tiles and thread count (so bit-identical results), from a
:class:`ForwardPlan` kept per ``(mask, grid, prefix tokens, engine, dtype)`` in the byte-bounded cache
(:func:`visattn.clear_caches`): the layout, the route, the tile list and its arguments already converted to ctypes,
checked once when the plan is built. Per call it checks only what varies (the tensors: CPU, the plan's dtype, shapes
that fit the grid) and passes their data pointers and strides.

It answers None, and the caller runs the custom operator, wherever the operator is needed or safer: autograd
records the call, ``torch.compile`` or ``torch.jit.trace`` traces it, a ``TorchDispatchMode``, a
``TorchFunctionMode`` (``with torch.device(...)`` is one) or a functorch transform (``vmap``, ``grad``) is active, a
tensor is a subclass (fake, functional or batched tensors), or the tensors do not fit (the operator then raises the
error that names the argument). :func:`direct_calls` turns the direct path off for a block, to compare both paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..._cache import cache_get, cache_put
from .. import native
from ..native import DTYPE_SUFFIX, row_major
from . import kernel_ops
from .sdpa import sdpa

__all__ = ["ForwardPlan", "direct_calls", "direct_enabled", "forward_plan", "progression_forward"]

_ENABLED = [True]


@contextlib.contextmanager
def direct_calls(enabled: bool) -> Iterator[None]:
    """Run the block with the direct path on (``True``, the default) or off (every call through the operator)."""
    previous = _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    try:
        yield
    finally:
        _ENABLED[0] = previous


def direct_enabled() -> bool:
    """Whether eager inference calls skip the custom operator (see :func:`direct_calls`)."""
    return _ENABLED[0]


@dataclass(frozen=True, eq=False)
class ForwardPlan:
    """What an inference call of one kind passes to the kernel besides its tensors.

    Attributes:
        route: ``kernel_ops.ROUTE_TILES`` (fused tile kernel) or ``kernel_ops.ROUTE_PER_QUERY``.
        dtype: the kernel's dtype.
        tokens: tokens of q and k (prefix tokens plus the grid).
        grid: grid tokens (the per-query kernel's output rows).
        prefix: prefix tokens.
        function: the typed ctypes function of the kernel.
        fixed: the arguments after the strides (tile list or layout), checked and converted once.
        keep: the tensors whose data pointers ``fixed`` holds (kept alive with the plan).
    """

    route: int
    dtype: torch.dtype
    tokens: int
    grid: int
    prefix: int
    function: ctypes._CFuncPtr
    fixed: tuple
    keep: tuple[Tensor, ...]


def _converted(function: str, values: dict[str, object]) -> tuple:
    signature = native.SIGNATURES[function]
    return tuple(native.convert_argument(function, name, kind, values[name])
                 for name, kind in signature.params if name in values)


def _build_plan(mask: str, shape: tuple[int, ...], prefix: int, engine: str, dtype: torch.dtype
                ) -> ForwardPlan | None:
    layout = kernel_ops.progression_layout(mask, list(shape))
    route, tiles = kernel_ops.progression_route(engine, False, layout, prefix, None, None)
    suffix = DTYPE_SUFFIX[dtype]
    if route == kernel_ops.ROUTE_TILES:
        name, library = f"visattn_tile_forward_{suffix}", "tile_attention"
        keep = (tiles.q_ptr, tiles.q_idx, tiles.seg_ptr, tiles.key_ptr, tiles.k_idx, tiles.mask_off, tiles.masks)
        fixed = _converted(name, {"count": tiles.count, "q_ptr": tiles.q_ptr, "q_idx": tiles.q_idx,
                                  "seg_ptr": tiles.seg_ptr, "key_ptr": tiles.key_ptr, "k_idx": tiles.k_idx,
                                  "mask_off": tiles.mask_off, "masks": tiles.masks})
    else:
        name, library = f"visattn_local_forward_{suffix}", "local_attention"
        grid_shape = torch.tensor(layout.shape, dtype=torch.int64)
        start, count, step = layout.forward
        keep = (grid_shape, start, count, step)
        fixed = _converted(name, {"ndim": len(layout.shape), "shape": grid_shape, "start": start, "count": count,
                                  "step": step, "prefix": prefix})
    function = native.typed_function(library, name)
    if function is None:
        return None
    return ForwardPlan(route, dtype, prefix + math.prod(shape), math.prod(shape), prefix, function, fixed, keep)


def forward_plan(mask: str, shape: tuple[int, ...], prefix: int, engine: str, dtype: torch.dtype
                 ) -> ForwardPlan | None:
    """The :class:`ForwardPlan` of ``mask`` (a :attr:`~visattn.masks.Mask.key`) on ``shape`` with ``prefix`` tokens
    on ``engine`` for ``dtype`` tensors, cached; None where the kernel library is not available. Raises the
    operator's ValueError where the mask has no progression layout or the engine is unknown."""
    key = ("direct.forward_plan", mask, shape, prefix, engine, dtype)
    found, plan = cache_get(key)
    if found:
        return plan
    return cache_put(key, _build_plan(mask, shape, prefix, engine, dtype))


def _plain(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the call may bypass the operator: plain tensors that autograd does not record, no mode or
    transform that must see the operator, no tracing."""
    return (type(q) is Tensor and type(k) is Tensor and type(v) is Tensor
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and torch._C._functorch.peek_interpreter_stack() is None
            and torch._C._get_tracing_state() is None)


def _fits(plan: ForwardPlan, q: Tensor, k: Tensor, v: Tensor) -> bool:
    """What the operator checks before native code, for this plan: CPU tensors of its dtype, 4-D, fitting together
    (k and v share q's batch and heads and their tokens, k q's head dim), with the plan's tokens."""
    dtype = plan.dtype
    if q.dtype is not dtype or k.dtype is not dtype or v.dtype is not dtype:
        return False
    if not (q.is_cpu and k.is_cpu and v.is_cpu) or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    batch, heads, tokens, dim = q.shape
    k_batch, k_heads, k_tokens, k_dim = k.shape
    v_batch, v_heads, v_tokens, _ = v.shape
    return (batch == k_batch == v_batch and heads == k_heads == v_heads and dim == k_dim
            and tokens == k_tokens == v_tokens == plan.tokens)


def progression_forward(q: Tensor, k: Tensor, v: Tensor, mask: str, shape: tuple[int, ...], prefix: int,
                        scale: float, engine: str) -> Tensor | None:
    """``progression_attention(q, k, v, mask, shape, prefix, scale, False, engine)[0]`` without the operator, or
    None where the operator must run (see the module docstring)."""
    if torch.compiler.is_compiling() or not _ENABLED[0] or not _plain(q, k, v):
        return None
    plan = forward_plan(mask, tuple(shape), prefix, engine, q.dtype) if q.dtype in DTYPE_SUFFIX else None
    if plan is None or not _fits(plan, q, k, v):
        return None
    scale = native.check_scale(scale)
    q, k, v = row_major(q), row_major(k), row_major(v)
    batch, heads, tokens, dim = q.shape
    dim_v = v.shape[-1]
    threads = torch.get_num_threads()
    if plan.route == kernel_ops.ROUTE_TILES:
        out = q.new_empty(batch, heads, tokens, dim_v)
        qs, ks, vs, os = native.stride_arrays(q.stride(), k.stride(), v.stride(), out.stride())
        plan.function(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), None, batch, heads, dim, dim_v,
                      qs, ks, vs, os, os, *plan.fixed, scale, threads)
        return out
    out = q.new_empty(batch, heads, plan.grid, dim_v)
    lse = q.new_empty(batch, heads, plan.grid)
    qs, ks, vs = native.stride_arrays(q.stride(), k.stride(), v.stride())
    plan.function(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), batch, heads, dim,
                  dim_v, qs, ks, vs, *plan.fixed, scale, threads)
    if not prefix:
        return out
    return torch.cat([sdpa(q[:, :, :prefix], k, v, scale=scale), out], dim=2)
