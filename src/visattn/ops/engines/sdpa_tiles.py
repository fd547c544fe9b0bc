"""The tiled fast path for structured masks: neighborhood, window, grid, halo, axial, strip and sliding window.

Paper: Hassani et al., "Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the
Threadblock Level" (arXiv 2403.04690): neighborhood attention as batched GEMMs over tiles of queries against the
keys their windows cover. Here every separable mask (the AND over axes of one ``AxisRule`` each) and the 1-D
sliding window runs that way:

``out_i = sum_{j in M(i)} softmax_j(q_i . k_j * scale) v_j``

with the queries cut into N-D tiles of ``Tq = prod T_a`` slots, each tile attending to the ``Wk = prod W_a``
key slots its queries' windows span (plus the P prefix keys) under the tile's bool mask, the outer AND of the
per-axis sub-tables, in one batched ``scaled_dot_product_attention`` call over all tiles, batches and heads.
The P prefix queries attend densely to all N keys. Intermediate memory is ``O(N * Wk)`` per batch and head
(mask and key tiles), never ``N^2``; :func:`tile_plan` reports it. Forward and backward run through SDPA and
autograd (:mod:`visattn.ops.engines.tile_autograd`: index gathers and strided views with fast backwards).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import Shape
from ...masks import Mask
from ..native import needs_grad
from .sdpa import sdpa
from .tile_autograd import gather_rows, scatter_rows, select_rows, unfold_windows
from .tile_plan import PlanTensors, TilePlan, tile_plan

__all__ = ["TilePlan", "key_tiles", "prepared_plan", "run_tile_plan", "tile_plan"]


def run_tile_plan(plan: TilePlan, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                  dropout_p: float = 0.0, tensors: PlanTensors | None = None) -> Tensor:
    """Run a :class:`TilePlan` on checked ``q, k, v`` (differentiable through SDPA, views and index gathers);
    ``tensors``: ``plan.tensors(q.dtype, q.device)`` when the caller has them."""
    b, h, _, dim = q.shape
    prefix = plan.num_prefix_tokens
    if tensors is None:
        tensors = plan.tensors(q.dtype, q.device)
    grid_q = q[:, :, prefix:]
    differentiable = needs_grad(q, k, v)
    if plan.query_identity:
        q_rows = grid_q
    elif differentiable:
        q_rows = gather_rows(grid_q, tensors.query_index, tensors.token_slot)
    else:
        q_rows = select_rows(grid_q, tensors.query_index)
    q_tiles = q_rows.reshape(b * h, plan.num_tiles, plan.tile_queries, dim)
    if plan.key_identity:
        k_tiles, v_tiles = key_tiles(plan, k), key_tiles(plan, v)
    else:
        k_tiles = key_tiles(plan, select_rows(k, tensors.key_index))
        v_tiles = key_tiles(plan, select_rows(v, tensors.key_index))
    outs = [sdpa(q_tiles[:, run.start : run.stop], k_tiles[:, run.start : run.stop],
                                           v_tiles[:, run.start : run.stop], attn_mask=mask, scale=scale,
                                           dropout_p=dropout_p)
            for run, mask in zip(plan.runs, tensors.masks, strict=True)]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    out = out.view(b, h, plan.num_tiles * plan.tile_queries, v.shape[-1])
    if tensors.empty is not None:
        out = out.masked_fill(tensors.empty, 0.0)
    if plan.query_identity:
        grid_out = out
    elif differentiable:
        grid_out = scatter_rows(out, tensors.token_slot)
    else:
        grid_out = select_rows(out, tensors.token_slot)
    if not prefix:
        return grid_out
    prefix_out = sdpa(q[:, :, :prefix], k, v, scale=scale, dropout_p=dropout_p)
    return torch.cat([prefix_out, grid_out], dim=2)


def key_tiles(plan: TilePlan, rows: Tensor) -> Tensor:
    """``[B * heads, num_tiles, tile_keys, dim]`` key tiles from the rows ``[B, heads, key_rows, dim]`` gathered with
    ``plan.key_index``: an overlapping strided view along the unfold axis, a plain view otherwise (reads only int
    attributes of the plan, so it traces under ``torch.compile``)."""
    b, h, _, dim = rows.shape
    if plan.unfold_axis is None:
        return rows.reshape(b * h, plan.num_tiles, plan.tile_keys, dim)
    buffer = rows.reshape(b * h, rows.shape[2] // plan.unfold_rest, plan.unfold_rest, dim)
    return unfold_windows(buffer, plan.unfold_window, plan.unfold_step).flatten(2, 3)


def prepared_plan(mask: Mask, shape: Shape, num_prefix_tokens: int, tile_sizes: tuple[int, ...] | None,
                  dtype: torch.dtype, device: torch.device) -> tuple[TilePlan, PlanTensors]:
    """:func:`tile_plan` and its tensors for ``dtype`` on ``device``, a constant under ``torch.compile`` (planning
    is index arithmetic in NumPy, run once per mask and grid, never traced)."""
    plan = tile_plan(mask, shape, num_prefix_tokens, tile_sizes)
    return plan, plan.tensors(dtype, device)


prepared_plan._dynamo_marked_constant = True  # torch.compiler.assume_constant_result, without importing dynamo
