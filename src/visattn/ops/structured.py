"""Public entry points for single structured engines, each checked before any native code runs and dispatched
through :mod:`visattn.ops.dispatch`: axial attention, the per-query kernel and per-query key lists."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import as_shape, check_qkv, check_scale, check_tokens
from ..masks import AxialMask, Mask
from .dispatch import ENGINES, Facts, kernel_refusal, run_engine
from .engines import kernel_ops
from .masked import masked_attention

__all__ = ["axial_attention", "index_attention", "local_attention"]


def axial_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    axis: int,
    shape: int | tuple[int, ...],
    num_prefix_tokens: int = 0,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Softmax attention along one axis of the token grid: ``masked_attention`` with ``axial_mask(axis)``.

    Paper: Ho et al., "Axial Attention in Multidimensional Transformers" (arXiv 1912.12180). A token at grid
    coordinate ``x`` attends to the tokens that differ from it only along ``axis``:
    ``out_x = sum_t softmax_t(q_x . k_{x[axis <- t]} * scale) v_{x[axis <- t]}``.

    Args:
        q, k, v: ``(B, heads, N, head_dim)`` with ``N = num_prefix_tokens + prod(shape)``.
        axis: the grid axis attended along (negative counts from the end).
        shape: the grid of the non-prefix tokens, row-major.
        num_prefix_tokens: global tokens in front.
        scale: logit scale, ``head_dim ** -0.5`` by default.
        dropout_p: attention dropout probability.
    """
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    return masked_attention(q, k, v, AxialMask(axis), shape, num_prefix_tokens, scale=scale, dropout_p=dropout_p)


def local_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: int | tuple[int, ...],
                    num_prefix_tokens: int = 0, scale: float | None = None, dropout_p: float = 0.0) -> Tensor | None:
    """Masked attention on the per-query kernel (:mod:`visattn.ops.engines.per_query`), or None where it cannot
    run (non-CPU tensors, dtypes other than float32/float64, dropout, no kernel, a mask without a progression
    layout); ``visattn.ops.explain(..., backend="per_query")`` says why. Arguments as :func:`masked_attention`."""
    check_qkv(q, k, v)
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a visattn.masks.Mask, got {type(mask).__name__}")
    shape, prefix = mask.bind(as_shape(shape), num_prefix_tokens)
    check_tokens(q.shape[2], shape, prefix, "q")
    check_tokens(k.shape[2], shape, prefix, "k")
    scale = check_scale(scale)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    facts = Facts(mask, shape, prefix, q.dtype, q.device.type, needs_grad, bool(dropout_p))
    if ENGINES["per_query"].refusal(facts) is not None:
        return None
    return run_engine("per_query", q, k, v, mask, shape, prefix, scale, dropout_p)


def index_attention(q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float | None = None) -> Tensor | None:
    """``out_i = sum_{j in index[..., i, :]} softmax_j(scale * q_i . k_j) v_j`` for per-query key lists (token
    indices into k; a negative entry ends a list) on the per-query kernel, without gathering keys: Sparsifiner's
    top-k execution. ``q``: ``(B, heads, Nq, d)``, ``k, v``: ``(B, heads, N, d)``, ``index``: ``(B, heads, Nq, kk)``
    int64 with entries below N. None where the kernel cannot run (autograd, non-CPU tensors, other dtypes)."""
    if not isinstance(q, Tensor) or not isinstance(k, Tensor) or not isinstance(v, Tensor):
        raise TypeError("q, k, v must be torch.Tensors")
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
    scale = check_scale(scale)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad or kernel_refusal(q.dtype, q.device.type, ("local_attention",)) is not None:
        return None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return kernel_ops.index_attention(q, k, v, index, scale)
