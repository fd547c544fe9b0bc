"""How each engine of :data:`visattn.ops.dispatch.ENGINES` runs a checked call (when it runs is the dispatch's
business): ``RUNNERS[name](q, k, v, mask, shape, num_prefix_tokens, scale, dropout_p)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..._checks import Shape
from ...masks import Mask
from .. import reference
from ..native import needs_grad
from . import block_sparse, dense, direct, kernel_ops, lines, sdpa_tiles
from .availability import kernel_refusal
from .flex import run_flex_attention
from .sdpa import sdpa

__all__ = ["RUNNERS", "prefix_rows", "run_engine"]


def prefix_rows(out: Tensor, q: Tensor, k: Tensor, v: Tensor, prefix: int, scale: float | None) -> Tensor:
    """``out``'s grid rows after the prefix queries' dense attention over every key."""
    if not prefix:
        return out
    prefix_out = sdpa(q[:, :, :prefix], k, v, scale=scale)
    return torch.cat([prefix_out, out[:, :, prefix:]], dim=2)


def _run_kernel(engine: str) -> Callable[..., Tensor]:
    """The runner of a kernel engine: the custom operator, or in eager inference the same kernel called directly
    (:mod:`visattn.ops.engines.direct`, identical results without the operator's per-call cost)."""

    def run(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
            dropout_p: float) -> Tensor:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        training = needs_grad(q, k, v)
        if not training:
            out = direct.progression_forward(q, k, v, mask.key, shape, prefix, scale, engine)
            if out is not None:
                return out
        out = kernel_ops.progression_attention(q, k, v, mask.key, list(shape), prefix, scale,
                                               training, engine)[0]
        return prefix_rows(out, q, k, v, prefix, scale) if training else out

    return run


def _run_block_sparse(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
                      dropout_p: float) -> Tensor:
    blocks = block_sparse.default_blocks(mask, shape)
    training = needs_grad(q, k, v)
    if not training and kernel_refusal(q.dtype, q.device.type, ("tile_attention",)) is None:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        out = kernel_ops.block_tile_attention(q, k, v, mask.key, list(shape), prefix, scale,
                                              *blocks)
        return prefix_rows(out, q, k, v, prefix, scale)
    return block_sparse.run_block_sparse_plan(block_sparse.block_sparse_plan(mask, shape, prefix, *blocks), q, k, v,
                                              scale)


def _run_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
              dropout_p: float) -> Tensor:
    return sdpa(q, k, v, scale=scale, dropout_p=dropout_p)


def _run_sdpa_causal(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
                     dropout_p: float) -> Tensor:
    return sdpa(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p)


def _run_lines(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
               dropout_p: float) -> Tensor:
    return lines.lines_attention(q, k, v, mask.axis % len(shape), shape, prefix, scale, dropout_p)


def _run_sdpa_tiles(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
                    dropout_p: float) -> Tensor:
    plan, tensors = sdpa_tiles.prepared_plan(mask, shape, prefix, None, q.dtype, q.device)
    return sdpa_tiles.run_tile_plan(plan, q, k, v, scale, dropout_p, tensors)


def _run_dense(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
               dropout_p: float) -> Tensor:
    return dense.sdpa_bool_mask(q, k, v, dense.dense_mask(mask, shape, prefix, q.device), scale, dropout_p)


def _run_flex(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
              dropout_p: float) -> Tensor:
    return run_flex_attention(q, k, v, dense.block_mask(mask, shape, prefix, q.device), scale=scale)


def _run_reference(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, prefix: int, scale: float | None,
                   dropout_p: float) -> Tensor:
    return reference.attention(q, k, v, mask=dense.dense_mask(mask, shape, prefix, q.device), scale=scale)


RUNNERS: dict[str, Callable[..., Tensor]] = {
    "sdpa": _run_sdpa,
    "sdpa_causal": _run_sdpa_causal,
    "fused_tiles": _run_kernel("fused_tiles"),
    "per_query": _run_kernel("per_query"),
    "sdpa_lines": _run_lines,
    "sdpa_tiles": _run_sdpa_tiles,
    "block_sparse": _run_block_sparse,
    "dense": _run_dense,
    "flex": _run_flex,
    "reference": _run_reference,
}


def run_engine(engine: str, q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, num_prefix_tokens: int,
               scale: float | None, dropout_p: float) -> Tensor:
    """Run ``engine`` on checked arguments (``shape`` and ``num_prefix_tokens`` bound by the mask)."""
    return RUNNERS[engine](q, k, v, mask, shape, num_prefix_tokens, scale, dropout_p)

