"""Public entry points for single structured engines, each checked (:func:`~visattn.ops.arguments.
check_masked_call`) before any engine or native code runs: axial attention, SDPA tiles with chosen tile sizes,
block-sparse attention with chosen blocks, the per-query kernel and per-query key lists."""

from __future__ import annotations

from torch import Tensor

from .._checks import check_scale
from ..masks import AxialMask, Mask, SeparableMask, SequenceMask
from .arguments import check_masked_call
from .dispatch import ENGINES, Facts, kernel_refusal, run_engine
from .engines import kernel_ops
from .engines.block_sparse import block_sparse_plan, default_blocks, run_block_sparse_plan
from .engines.sdpa_tiles import prepared_plan, run_tile_plan
from .masked import masked_attention
from .native import needs_grad

__all__ = ["axial_attention", "block_sparse_attention", "index_attention", "local_attention", "tiled_attention"]


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
    shape, prefix, scale = check_masked_call(q, k, v, mask, shape, num_prefix_tokens, scale)
    facts = Facts(mask, shape, prefix, q.dtype, q.device.type, needs_grad(q, k, v), bool(dropout_p))
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
    if needs_grad(q, k, v) or kernel_refusal(q.dtype, q.device.type, ("local_attention",)) is not None:
        return None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return kernel_ops.index_attention(q, k, v, index, scale)


def tiled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask,
    shape: int | tuple[int, ...],
    num_prefix_tokens: int = 0,
    scale: float | None = None,
    tile_sizes: tuple[int, ...] | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Masked softmax attention for a separable or sliding-window mask, computed tile by tile on batched SDPA (the
    ``sdpa_tiles`` engine, with the tile sizes chosen here or by its cost model).

    Args:
        q, k, v: ``(B, heads, N, head_dim)`` with ``N = num_prefix_tokens + prod(shape)`` (v may have its own
            head_dim).
        mask: a :class:`~visattn.masks.SeparableMask` (neighborhood, window, grid, halo, axial, strip) or a
            :class:`~visattn.masks.SequenceMask` (sliding window; full and causal work but gain nothing).
        shape: the grid of the non-prefix tokens, row-major.
        num_prefix_tokens: global tokens in front.
        scale: logit scale, ``head_dim ** -0.5`` by default.
        tile_sizes: query tile size per tiled axis (one for a sequence mask); None lets the cost model choose.
        dropout_p: attention dropout (SDPA then runs its unfused kernel on the tiles: memory stays O(N * Wk)).
    """
    if isinstance(mask, Mask) and not isinstance(mask, (SeparableMask, SequenceMask)):
        raise TypeError(f"mask must be a SeparableMask or SequenceMask, got {type(mask).__name__}")
    shape, prefix, scale = check_masked_call(q, k, v, mask, shape, num_prefix_tokens, scale)
    if tile_sizes is not None:
        tile_sizes = tuple(tile_sizes)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    plan, tensors = prepared_plan(mask, shape, prefix, tile_sizes, q.dtype, q.device)
    return run_tile_plan(plan, q, k, v, scale, dropout_p, tensors)


def _check_block(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask,
    shape: int | tuple[int, ...],
    num_prefix_tokens: int = 0,
    scale: float | None = None,
    query_block: int | None = None,
    key_block: int | None = None,
) -> Tensor:
    """Masked softmax attention computed only on the (query block, key block) pairs that hold allowed pairs, on
    batched SDPA (differentiable), with the blocks chosen here or by :func:`~visattn.ops.engines.block_sparse.
    default_blocks`.

    Args:
        q, k, v: ``(B, heads, N, head_dim)`` with ``N = num_prefix_tokens + prod(shape)`` (v may have its own
            head_dim).
        mask: any :class:`~visattn.masks.Mask`; it pays where the mask is block-sparse (Radial Attention).
        shape: the grid of the non-prefix tokens, row-major.
        num_prefix_tokens: global tokens in front.
        scale: logit scale, ``head_dim ** -0.5`` by default.
        query_block, key_block: tokens per block; defaults from ``default_blocks``.
    """
    shape, prefix, scale = check_masked_call(q, k, v, mask, shape, num_prefix_tokens, scale)
    default_q, default_k = default_blocks(mask, shape)
    query_block = default_q if query_block is None else query_block
    key_block = default_k if key_block is None else key_block
    _check_block("query_block", query_block)
    _check_block("key_block", key_block)
    return run_block_sparse_plan(block_sparse_plan(mask, shape, prefix, query_block, key_block), q, k, v, scale)
