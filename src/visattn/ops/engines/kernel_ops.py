"""visattn's C++ kernels as PyTorch custom operators (``torch.library.custom_op``), as NATTEN registers its own.

Each operator has a fake (meta) implementation, so ``torch.compile`` keeps it in the graph as one opaque node
instead of stepping around it, and the trainable ones register their backward (``register_autograd``) as a second
operator. That backward operator has no autograd formula of its own: a double backward (``create_graph=True``)
through a kernel raises PyTorch's "autograd kernel was not registered" error instead of returning gradients that
silently miss the second-order term.

Operators take only tensors, ints, floats, bools and strings, so a mask is passed by its
:attr:`~visattn.masks.Mask.key` and a plan is rebuilt (cached) inside the operator from ``(mask, shape,
num_prefix_tokens)``. Every operator checks what reaches native code: CPU tensors of one float dtype, token counts
that match the grid, index values in range, a finite Python float scale.

- ``visattn::progression_attention`` (+ ``_backward``): masks whose per-axis key sets are arithmetic progressions,
  on the fused tile kernel (``engine="fused_tiles"``; training where tiles share keys may take the per-query kernel,
  :func:`~visattn.ops.engines.fused_tiles.training_tiles`) or the per-query kernel (``engine="per_query"``).
- ``visattn::tile_list_attention`` (+ ``_backward``): any explicit
  :class:`~visattn.ops.engines.fused_tiles.TileList` on the fused tile kernel (:func:`tile_attention`).
- ``visattn::block_tile_attention``: a mask's present blocks on the fused tile kernel (Radial Attention), forward.
- ``visattn::bitmap_tile_attention``: PARO's per-head block bitmaps on the fused tile kernel, forward.
- ``visattn::index_attention``: per-query key lists (Sparsifiner) on the per-query kernel, forward.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..._cache import byte_cached
from ..._checks import check_scale
from ...masks import Mask
from ..native import DTYPE_SUFFIX, needs_grad, row_major
from . import fused_tiles, per_query
from .layout import LocalLayout, local_layout
from .sdpa import sdpa

__all__ = ["bitmap_tile_attention", "block_tile_attention", "index_attention", "progression_attention",
           "tile_attention", "tile_list_attention"]

ROUTE_TILES = 0
ROUTE_PER_QUERY = 1


def _check_tensors(**tensors: Tensor) -> None:
    """CPU tensors of one float dtype shaped ``(B, heads, N, dim)``; with ``q, k, v``: ones that fit together (the
    kernels index k and v with q's batch and heads, and k with q's head dim)."""
    first = next(iter(tensors.values()))
    for name, t in tensors.items():
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU for visattn's kernels, got {t.device}")
        if t.dtype not in DTYPE_SUFFIX or t.dtype != first.dtype:
            raise TypeError(f"{name} must be float32 or float64 like the others, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be shaped (B, heads, N, dim), got {tuple(t.shape)}")
    q, k, v = tensors.get("q"), tensors.get("k"), tensors.get("v")
    if q is not None and k is not None and v is not None and (
            q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]):
        raise ValueError(f"q, k, v do not fit together (they must share (B, heads), k and v their tokens, q and k "
                         f"their head dim): q={tuple(q.shape)}, k={tuple(k.shape)}, v={tuple(v.shape)}")


def _check_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor) -> None:
    """The saved forward and the incoming gradient fit the kernels' backward (no row they index is missing)."""
    _check_tensors(q=q, k=k, v=v, out=out, grad_out=grad_out, lse=lse[..., None])
    rows = (*q.shape[:3], v.shape[-1])
    if tuple(out.shape) != rows or tuple(grad_out.shape) != rows or tuple(lse.shape) != tuple(q.shape[:3]):
        raise ValueError(f"out and grad_out must be {rows} and lse {tuple(q.shape[:3])}, got out={tuple(out.shape)}, "
                         f"grad_out={tuple(grad_out.shape)}, lse={tuple(lse.shape)}")


def _check_grid(q: Tensor, k: Tensor, shape: list[int], prefix: int) -> None:
    tokens = prefix + math.prod(shape)
    for name, t in (("q", q), ("k", k)):
        if t.shape[2] != tokens:
            raise ValueError(f"{name} has {t.shape[2]} tokens, but num_prefix_tokens={prefix} and shape={tuple(shape)} "
                             f"make {tokens}")


def progression_layout(mask: str, shape: list[int]) -> LocalLayout:
    """The progression layout of the mask with key ``mask`` on ``shape`` (ValueError where it has none)."""
    layout = local_layout(Mask.from_key(mask), tuple(shape))
    if layout is None:
        raise ValueError(f"mask {mask} has no per-axis progression layout on shape {tuple(shape)}")
    return layout


def progression_route(engine: str, training: bool, layout: LocalLayout, prefix: int, k: Tensor | None,
                      v: Tensor | None) -> tuple[int, fused_tiles.TileList | None]:
    """Which kernel runs ``engine`` (``ROUTE_TILES`` with its tiles, or ``ROUTE_PER_QUERY``); ``k, v`` are read
    only in training (the size of the backward's gradient copies)."""
    if engine == "per_query":
        return ROUTE_PER_QUERY, None
    if engine != "fused_tiles":
        raise ValueError(f"engine must be 'fused_tiles' or 'per_query', got {engine!r}")
    if not training:
        return ROUTE_TILES, fused_tiles.progression_tiles(layout, prefix, None, True)
    tiles = fused_tiles.training_tiles(layout, prefix, k, v)
    return (ROUTE_PER_QUERY, None) if tiles is None else (ROUTE_TILES, tiles)


@torch.library.custom_op("visattn::progression_attention", mutates_args=())
def progression_attention(q: Tensor, k: Tensor, v: Tensor, mask: str, shape: list[int], num_prefix_tokens: int,
                          scale: float, training: bool, engine: str) -> tuple[Tensor, Tensor, Tensor]:
    """Masked attention for a progression mask: ``(out [B, H, N, dv], lse, route)``.

    Without ``training`` every row is computed (the prefix queries, which attend densely, as one more tile); with
    it, ``out``'s first ``num_prefix_tokens`` rows are 0 (they are SDPA outside, under autograd); ``lse``
    (``[B, H, N]``, empty unless ``training``) and the 0-dim int64 ``route`` are what the backward needs."""
    _check_tensors(q=q, k=k, v=v)
    _check_grid(q, k, shape, num_prefix_tokens)
    check_scale(scale)
    layout = progression_layout(mask, shape)
    q, k, v = row_major(q), row_major(k), row_major(v)
    route, tiles = progression_route(engine, training, layout, num_prefix_tokens, k, v)
    if route == ROUTE_PER_QUERY:
        if training and layout.transposed is None:
            raise ValueError(f"the per-query kernel cannot train mask {mask} on {tuple(shape)}: the queries that see "
                             f"a key are not a progression")
        out, lse = per_query.local_forward(q, k, v, layout, num_prefix_tokens, scale)
        if num_prefix_tokens:
            prefix_rows = (out.new_zeros(*out.shape[:2], num_prefix_tokens, out.shape[-1]) if training
                           else sdpa(q[:, :, :num_prefix_tokens], k, v, scale=scale))
            out = torch.cat([prefix_rows, out], dim=2)
            lse = torch.cat([lse.new_full((*lse.shape[:2], num_prefix_tokens), float("-inf")), lse], dim=2)
    else:
        out = q.new_empty(*q.shape[:3], v.shape[-1])
        if training:
            out[:, :, :num_prefix_tokens] = 0  # no tile computes them: never return uninitialised memory
        lse = q.new_full(q.shape[:3], float("-inf")) if training else None
        fused_tiles.run_tiles(q, k, v, tiles, out, scale, lse)
    if not training:
        lse = q.new_empty(0)
    return out, lse, torch.tensor(route, dtype=torch.int64)


@progression_attention.register_fake
def _(q, k, v, mask, shape, num_prefix_tokens, scale, training, engine):
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    if not training:
        return out, q.new_empty(0), torch.empty((), dtype=torch.int64)
    return out, q.new_empty(q.shape[:3]), torch.empty((), dtype=torch.int64)


@torch.library.custom_op("visattn::progression_attention_backward", mutates_args=())
def progression_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                                   route: Tensor, mask: str, shape: list[int], num_prefix_tokens: int, scale: float
                                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` of :func:`progression_attention` (run with ``training=True``) for the gradient ``grad_out``
    of its ``out``."""
    _check_backward(grad_out, q, k, v, out, lse)
    _check_grid(q, k, shape, num_prefix_tokens)
    check_scale(scale)
    layout = progression_layout(mask, shape)
    prefix = num_prefix_tokens
    q, k, v = row_major(q), row_major(k), row_major(v)
    if int(route) == ROUTE_PER_QUERY:
        return per_query.local_backward(q, k, v, out[:, :, prefix:], lse[:, :, prefix:].contiguous(),
                                        grad_out[:, :, prefix:], layout, prefix, scale)
    tiles = fused_tiles.training_tiles(layout, prefix, k, v)
    if tiles is None:
        tiles = fused_tiles.progression_tiles(layout, prefix, fused_tiles.disjoint_tile_sizes(layout))
    return fused_tiles.run_tiles_backward(q, k, v, out, lse, grad_out, tiles, scale)


@progression_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, route, mask, shape, num_prefix_tokens, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, mask, shape, num_prefix_tokens, scale, training, engine = inputs
    out, lse, route = output
    if not training:
        ctx.trained = False
        return
    ctx.trained = True
    ctx.save_for_backward(q, k, v, out, lse, route)
    ctx.mask, ctx.shape, ctx.num_prefix_tokens, ctx.scale = mask, shape, num_prefix_tokens, scale
    ctx.mark_non_differentiable(lse, route)


def refuse_double_backward(what: str) -> None:
    """Raise where autograd records the backward (``create_graph=True``): the kernels' backward has no derivative
    of its own, and a first gradient without ``grad_fn`` would make a gradient penalty silently zero."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{what}: double backward (create_graph=True) is not implemented by visattn's kernels; "
                           f"use backend='dense' or backend='sdpa_lines' for gradient penalties")


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor, grad_route: Tensor) -> tuple[Tensor | None, ...]:
    refuse_double_backward("visattn::progression_attention")
    if not ctx.trained:
        raise RuntimeError("visattn::progression_attention ran with training=False and saved nothing for a backward")
    q, k, v, out, lse, route = ctx.saved_tensors
    dq, dk, dv = progression_attention_backward(grad_out, q, k, v, out, lse, route, ctx.mask, ctx.shape,
                                                ctx.num_prefix_tokens, ctx.scale)
    return dq, dk, dv, None, None, None, None, None, None


progression_attention.register_autograd(_backward, setup_context=_setup_context)


def _tile_list(q_ptr: Tensor, q_idx: Tensor, seg_ptr: Tensor, key_ptr: Tensor, k_idx: Tensor, mask_off: Tensor,
               masks: Tensor, tokens: int, keys: int) -> fused_tiles.TileList:
    """A :class:`~visattn.ops.engines.fused_tiles.TileList` from its tensors, checked so that no index the kernel
    follows leaves the arrays it reads."""
    for name, t in (("q_ptr", q_ptr), ("q_idx", q_idx), ("seg_ptr", seg_ptr), ("key_ptr", key_ptr),
                    ("k_idx", k_idx), ("mask_off", mask_off)):
        if t.dtype != torch.int64 or t.dim() != 1 or t.device.type != "cpu":
            raise ValueError(f"tiles.{name} must be a 1-D int64 CPU tensor, got {t.dtype} {tuple(t.shape)} on "
                             f"{t.device}")
    if masks.dtype != torch.uint8 or masks.dim() != 1:
        raise ValueError(f"tiles.masks must be a 1-D uint8 tensor, got {masks.dtype} {tuple(masks.shape)}")
    count = len(q_ptr) - 1
    if count < 0 or len(seg_ptr) != count + 1 or len(mask_off) != len(key_ptr) - 1:
        raise ValueError("tiles: q_ptr, seg_ptr, key_ptr and mask_off do not describe one tile list")
    for name, ptr, size in (("q_ptr", q_ptr, len(q_idx)), ("seg_ptr", seg_ptr, len(key_ptr) - 1),
                            ("key_ptr", key_ptr, len(k_idx))):
        if len(ptr) and (int(ptr[0]) != 0 or int(ptr[-1]) != size or bool((ptr[1:] < ptr[:-1]).any())):
            raise ValueError(f"tiles.{name} must rise from 0 to {size}")
    for name, idx, bound in (("q_idx", q_idx, tokens), ("k_idx", k_idx, keys)):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= bound):
            raise ValueError(f"tiles.{name} must hold token indices in [0, {bound})")
    rows = torch.diff(q_ptr)
    tile_of_seg = torch.repeat_interleave(torch.arange(count), torch.diff(seg_ptr))
    stored = (rows[tile_of_seg] + fused_tiles.MASK_ALIGN - 1) // fused_tiles.MASK_ALIGN * fused_tiles.MASK_ALIGN
    ends = mask_off + torch.diff(key_ptr) * stored
    if bool(((mask_off >= 0) & (ends > masks.numel())).any()):
        raise ValueError("tiles.mask_off points past the end of tiles.masks")
    return fused_tiles.TileList(q_ptr, q_idx, seg_ptr, key_ptr, k_idx, mask_off, masks)


@torch.library.custom_op("visattn::tile_list_attention", mutates_args=())
def tile_list_attention(q: Tensor, k: Tensor, v: Tensor, q_ptr: Tensor, q_idx: Tensor, seg_ptr: Tensor,
                        key_ptr: Tensor, k_idx: Tensor, mask_off: Tensor, masks: Tensor, scale: float,
                        training: bool) -> tuple[Tensor, Tensor]:
    """``(out [B, H, N, dv], lse)`` of the queries an explicit tile list names (other rows 0; ``lse`` empty unless
    ``training``)."""
    _check_tensors(q=q, k=k, v=v)
    check_scale(scale)
    tiles = _tile_list(q_ptr, q_idx, seg_ptr, key_ptr, k_idx, mask_off, masks, q.shape[2], k.shape[2])
    q, k, v = row_major(q), row_major(k), row_major(v)
    out = q.new_zeros(*q.shape[:3], v.shape[-1])
    lse = q.new_full(q.shape[:3], float("-inf")) if training else None
    fused_tiles.run_tiles(q, k, v, tiles, out, scale, lse)
    return out, (lse if training else q.new_empty(0))


@tile_list_attention.register_fake
def _(q, k, v, q_ptr, q_idx, seg_ptr, key_ptr, k_idx, mask_off, masks, scale, training):
    return q.new_empty(*q.shape[:3], v.shape[-1]), q.new_empty(q.shape[:3] if training else (0,))


@torch.library.custom_op("visattn::tile_list_attention_backward", mutates_args=())
def tile_list_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                                 q_ptr: Tensor, q_idx: Tensor, seg_ptr: Tensor, key_ptr: Tensor, k_idx: Tensor,
                                 mask_off: Tensor, masks: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` of :func:`tile_list_attention`."""
    _check_backward(grad_out, q, k, v, out, lse)
    check_scale(scale)
    tiles = _tile_list(q_ptr, q_idx, seg_ptr, key_ptr, k_idx, mask_off, masks, q.shape[2], k.shape[2])
    q, k, v = row_major(q), row_major(k), row_major(v)
    return fused_tiles.run_tiles_backward(q, k, v, out, lse, grad_out, tiles, scale)


@tile_list_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, q_ptr, q_idx, seg_ptr, key_ptr, k_idx, mask_off, masks, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _tile_list_setup(ctx, inputs, output) -> None:
    q, k, v, *tile_tensors, scale, training = inputs
    out, lse = output
    ctx.trained = training
    ctx.scale = scale
    if training:
        ctx.save_for_backward(q, k, v, out, lse, *tile_tensors)
    ctx.mark_non_differentiable(lse)


def _tile_list_backward(ctx, grad_out: Tensor, grad_lse: Tensor) -> tuple[Tensor | None, ...]:
    refuse_double_backward("visattn::tile_list_attention")
    if not ctx.trained:
        raise RuntimeError("visattn::tile_list_attention ran with training=False and saved nothing for a backward")
    q, k, v, out, lse, *tile_tensors = ctx.saved_tensors
    dq, dk, dv = tile_list_attention_backward(grad_out, q, k, v, out, lse, *tile_tensors, ctx.scale)
    return dq, dk, dv, *([None] * 9)


tile_list_attention.register_autograd(_tile_list_backward, setup_context=_tile_list_setup)


def tile_attention(q: Tensor, k: Tensor, v: Tensor, tiles: fused_tiles.TileList, num_prefix_tokens: int = 0,
                   scale: float | None = None) -> Tensor:
    """Attention of the queries ``tiles`` names over their key segments on the fused tile kernel, differentiable;
    the first ``num_prefix_tokens`` queries attend densely (SDPA). ``q, k, v``: CPU float32/float64 ``(B, heads,
    N, head_dim)``; queries no tile names output 0."""
    scale = check_scale(scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    training = needs_grad(q, k, v)
    out = tile_list_attention(q, k, v, tiles.q_ptr, tiles.q_idx, tiles.seg_ptr, tiles.key_ptr, tiles.k_idx,
                              tiles.mask_off, tiles.masks, scale, training)[0]
    if not num_prefix_tokens:
        return out
    prefix_out = sdpa(q[:, :, :num_prefix_tokens], k, v, scale=scale)
    return torch.cat([prefix_out, out[:, :, num_prefix_tokens:]], dim=2)


@torch.library.custom_op("visattn::block_tile_attention", mutates_args=())
def block_tile_attention(q: Tensor, k: Tensor, v: Tensor, mask: str, shape: list[int], num_prefix_tokens: int,
                         scale: float, query_block: int, key_block: int) -> Tensor:
    """Grid rows (``[B, H, N, dv]``, prefix rows 0) of ``mask`` over its present (query block, key
    block) pairs (:func:`~visattn.ops.engines.block_sparse.block_tiles`), forward only."""
    from .block_sparse import block_tiles

    _check_tensors(q=q, k=k, v=v)
    _check_grid(q, k, shape, num_prefix_tokens)
    check_scale(scale)
    tiles = block_tiles(Mask.from_key(mask), tuple(shape), num_prefix_tokens, query_block, key_block)
    q, k, v = row_major(q), row_major(k), row_major(v)
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    out[:, :, :num_prefix_tokens] = 0  # no tile computes them: never return uninitialised memory
    fused_tiles.run_tiles(q, k, v, tiles, out, scale)
    return out


@block_tile_attention.register_fake
def _(q, k, v, mask, shape, num_prefix_tokens, scale, query_block, key_block):
    return q.new_empty(*q.shape[:3], v.shape[-1])


@torch.library.custom_op("visattn::bitmap_tile_attention", mutates_args=())
def bitmap_tile_attention(q: Tensor, k: Tensor, v: Tensor, bitmap: Tensor, block: int, scale: float) -> Tensor:
    """Attention of every head over the (query block, key block) tiles its ``bitmap`` (bool ``[heads, nb, nb]``)
    keeps (PARO); a query block without kept tiles outputs 0. Forward only."""
    _check_tensors(q=q, k=k, v=v)
    check_scale(scale)
    n = q.shape[2]
    if k.shape[2] != n:
        raise ValueError(f"bitmap attention is self-attention: k must have q's {n} tokens, got {k.shape[2]}")
    if isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")
    nb = -(-n // block)
    if bitmap.dtype != torch.bool or tuple(bitmap.shape) != (q.shape[1], nb, nb):
        raise ValueError(f"bitmap must be bool of shape (heads, ceil(N / block), ceil(N / block))="
                         f"{(q.shape[1], nb, nb)}, got {bitmap.dtype} {tuple(bitmap.shape)}")
    q, k, v = row_major(q), row_major(k), row_major(v)
    out = q.new_zeros(*q.shape[:3], v.shape[-1])
    bitmaps = bitmap.cpu().numpy()
    for head in range(q.shape[1]):
        tiles = _bitmap_tiles(bitmaps[head].tobytes(), nb, block, n)
        fused_tiles.run_tiles(q[:, head : head + 1], k[:, head : head + 1], v[:, head : head + 1], tiles,
                              out[:, head : head + 1], scale)
    return out


@bitmap_tile_attention.register_fake
def _(q, k, v, bitmap, block, scale):
    return q.new_empty(*q.shape[:3], v.shape[-1])


@byte_cached
def _bitmap_tiles(bitmap: bytes, nb: int, block: int, num_tokens: int) -> fused_tiles.TileList:
    """PARO's bitmaps are static after calibration: their tiles are built once (kept in the byte-bounded cache)."""
    return fused_tiles.bitmap_tiles(np.frombuffer(bitmap, dtype=bool).reshape(nb, nb), block, num_tokens)


@torch.library.custom_op("visattn::index_attention", mutates_args=())
def index_attention(q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float) -> Tensor:
    """``out_i = sum_{j in index[..., i, :]} softmax_j(scale * q_i . k_j) v_j`` (a negative entry ends a list),
    forward only."""
    _check_tensors(q=q, k=k, v=v)
    check_scale(scale)
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v do not fit together: q={tuple(q.shape)}, k={tuple(k.shape)}, v={tuple(v.shape)}")
    if index.dtype != torch.int64 or index.dim() != 4 or tuple(index.shape[:3]) != tuple(q.shape[:3]):
        raise ValueError(f"index must be int64 of shape (B, heads, Nq, kk) with (B, heads, Nq)={tuple(q.shape[:3])}, "
                         f"got {index.dtype} {tuple(index.shape)}")
    if index.device.type != "cpu":
        raise ValueError(f"index must be on the CPU, got {index.device}")
    if index.numel() and int(index.max()) >= k.shape[2]:
        raise ValueError(f"index must hold key indices below N={k.shape[2]} (negative ends a list), got "
                         f"{int(index.max())}")
    q, k, v = row_major(q), row_major(k), row_major(v)
    return per_query.index_forward(q, k, v, index.contiguous(), scale)


@index_attention.register_fake
def _(q, k, v, index, scale):
    return q.new_empty(*q.shape[:3], v.shape[-1])
