"""Block-sparse execution of a mask: only the (query block, key block) pairs that hold an allowed pair are computed.

Used as the fast path of Radial Attention (Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy
Decay for Long Video Generation", arXiv 2506.19852), whose released code runs a block-sparse kernel over
128-token blocks. The grid's tokens are cut into query blocks and key blocks; for each query block ``I`` the key
blocks ``J(I)`` holding at least one allowed pair are gathered (plus the prefix tokens, seen by every query), and

``out_i = sum_{j in J(I), M[i, j]} softmax_j(q_i . k_j * scale) v_j``

runs as batched ``scaled_dot_product_attention`` over groups of query blocks, so empty blocks cost nothing. A
tile (query block x key block) is either all allowed, needing no mask, or partial, one of a few distinct patterns
stored once. Each query block's full tiles run without a mask and its partial tiles under their exact additive
mask; on the CPU the two runs of SDPA's flash kernel are merged by their log-sum-exps (:class:`TwoPartAttention`),
elsewhere they run as one masked call. Prefix queries attend densely to all keys. Forward and backward are exact
(``index_select`` gathers, SDPA, and the merge's own backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..._cache import byte_cached
from ..._checks import Shape, num_tokens
from ...masks import Mask, RadialMask
from ...masks.base import ROW_BUDGET
from .fused_tiles import MAX_TILE_QUERIES, TileList, build_tiles
from .sdpa import sdpa

FULL_TILE = 0
EMPTY_TILE = 1
GROUP_KEY_TOKENS = 1 << 16
PAD_WASTE = 0.125
QUERY_BLOCK = 256
KEY_BLOCK = 64
MIN_BLOCK = 32

__all__ = [
    "BlockSparsePlan",
    "QueryGroup",
    "block_sparse_plan",
    "block_tiles",
    "default_blocks",
    "run_block_sparse_plan",
]


@dataclass(frozen=True)
class QueryGroup:
    """Query blocks computed together, each against ``num_full`` key blocks whose tiles are all allowed (no mask)
    followed by ``num_masked`` key blocks under their tile masks (partial tiles, and padding up to the group's
    largest count).

    Attributes:
        query_blocks: ``[G]`` query block indices.
        full_keys: ``[G * num_full]`` key block of every full slot (prefix blocks follow the grid's blocks).
        masked_keys: ``[G * num_masked]`` key block of every masked slot.
        masked_tiles: ``[G, num_masked]`` their tiles in :attr:`BlockSparsePlan.tiles`.
        masked_row_empty: ``[G, query_block]`` bool for queries that see no key in the masked slots, or None.
        empty: ``[G, query_block]`` bool for queries that see no key at all (their output is 0), or None.
    """

    query_blocks: Tensor
    num_full: int
    num_masked: int
    full_keys: Tensor
    masked_keys: Tensor
    masked_tiles: Tensor
    masked_row_empty: Tensor | None
    empty: Tensor | None


@dataclass(frozen=True, eq=False)
class BlockSparsePlan:
    """How a mask on a grid is computed block by block (index tensors on the CPU).

    Attributes:
        query_block, key_block: tokens per query block and per key block.
        num_prefix_tokens: prefix tokens P (dense both ways).
        grid_tokens: prod(shape).
        num_query_blocks, num_key_blocks: ``ceil(grid_tokens / query_block)`` and
            ``ceil(grid_tokens / key_block)``; the ``ceil(P / key_block)`` prefix key blocks follow the grid's.
        groups: the SDPA calls.
        inverse: ``[num_query_blocks]`` position of every query block in the concatenated group outputs.
        tiles: ``[U, query_block, key_block]`` bool distinct tile patterns; tile 0 is all allowed, tile 1 none.
        attended_blocks: (query block, key block) pairs computed, prefix blocks and padding slots included.
    """

    query_block: int
    key_block: int
    num_prefix_tokens: int
    grid_tokens: int
    num_query_blocks: int
    num_key_blocks: int
    groups: tuple[QueryGroup, ...]
    inverse: Tensor
    tiles: Tensor
    attended_blocks: int

    @property
    def score_elements(self) -> int:
        """Query-key scores computed per batch and head (prefix queries included)."""
        n = self.num_prefix_tokens + self.grid_tokens
        return self.attended_blocks * self.query_block * self.key_block + self.num_prefix_tokens * n

    @property
    def block_density(self) -> float:
        """Scores computed / N^2."""
        n = self.num_prefix_tokens + self.grid_tokens
        return self.score_elements / (n * n)


def _tile_words(tiles: Tensor) -> Tensor:
    """``[T, a, b]`` bool tiles as ``[T, ceil(a * b / 8)]`` int64 words (same rows iff same tiles)."""
    flat = tiles.reshape(tiles.shape[0], -1)
    flat = F.pad(flat, (0, -flat.shape[1] % 8)).contiguous()
    return flat.view(torch.int64)


def _distinct_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """For each distinct row of ``rows``: the index of one occurrence; and for each row, its distinct row."""
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((unique.shape[0],), rows.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0]), reduce="amin")
    return first, inverse


@dataclass(frozen=True)
class _Occupancy:
    present: Tensor
    tile_ids: Tensor
    partial: Tensor
    empty: Tensor | None


def _code_occupancy(mask: RadialMask, shape: Shape) -> _Occupancy:
    """Radial Attention's released rule on its own blocks: every present tile is full (but the last column)."""
    grid, block = num_tokens(shape), mask.block_size
    present = mask.code_blocks(shape)
    tile_ids = torch.zeros_like(present, dtype=torch.long)
    partial = torch.empty(0, block, block, dtype=torch.bool)
    if grid % block:
        partial = torch.ones(1, block, block, dtype=torch.bool)
        partial[:, :, grid % block :] = False
        tile_ids[:, -1] = 2
    return _Occupancy(present, tile_ids, partial, None)


def _tile_any_all(tiles: Tensor) -> tuple[Tensor, Tensor]:
    """Any and all over each tile of a contiguous bool ``[Q, query_block, K, key_block]`` view, 8 bools per int64
    word when ``key_block`` allows (bools are bytes 0/1, so a word is 0 iff all 8 are False)."""
    q, bq, k, bk = tiles.shape
    if bk % 8:
        return tiles.amax(dim=(1, 3)), tiles.amin(dim=(1, 3))
    words = tiles.view(torch.int64).view(q, bq, k, bk // 8)
    all_true = int.from_bytes(bytes([1] * 8), "little")
    return words.amax(dim=(1, 3)) > 0, words.amin(dim=(1, 3)) == all_true


def _occupancy(mask: Mask, shape: Shape, query_block: int, key_block: int) -> _Occupancy:
    """Per (query block, key block): allowed pair present, tile id (partial tiles deduplicated, ids from 2), the
    distinct partial tiles, and the grid queries that see no grid key (None if there are none); from row chunks
    of the mask, never N x N at once. The padding queries of the last block count as allowing every key inside
    tiles (their output is dropped; this keeps their softmax finite and full tiles full), not for presence."""
    if isinstance(mask, RadialMask) and mask.rule == "code" and query_block == key_block == mask.block_size:
        return _code_occupancy(mask, shape)
    grid = num_tokens(shape)
    nq, nk = -(-grid // query_block), -(-grid // key_block)
    present = torch.zeros(nq, nk, dtype=torch.bool)
    tile_ids = torch.zeros(nq, nk, dtype=torch.long)
    partial_tiles, partial_where, empty_parts = [], [], []
    step = max(1, ROW_BUDGET // (nk * key_block * query_block))
    for qb0 in range(0, nq, step):
        qb1 = min(nq, qb0 + step)
        start, stop = qb0 * query_block, min(grid, qb1 * query_block)
        rows = torch.zeros((qb1 - qb0) * query_block, nk * key_block, dtype=torch.bool)
        rows[: stop - start, :grid] = mask.rows(shape, start, stop)
        empty_parts.append(~rows[: stop - start].amax(dim=1))
        tiles = rows.view(qb1 - qb0, query_block, nk, key_block)
        any_, all_ = _tile_any_all(tiles)
        if stop - start < rows.shape[0]:
            rows[stop - start :, :grid] = True
            all_ = _tile_any_all(tiles)[1]
        partial = any_ & ~all_
        present[qb0:qb1] = any_
        where = partial.nonzero()
        partial_tiles.append(tiles[where[:, 0], :, where[:, 1]])
        partial_where.append(where + torch.tensor([qb0, 0]))
    distinct = torch.empty(0, query_block, key_block, dtype=torch.bool)
    tiles = torch.cat(partial_tiles)
    if tiles.shape[0]:
        where = torch.cat(partial_where)
        first, inverse = _distinct_rows(_tile_words(tiles))
        distinct = tiles[first]
        tile_ids[where[:, 0], where[:, 1]] = inverse + 2
    empty = torch.cat(empty_parts)
    return _Occupancy(present, tile_ids, distinct, empty if bool(empty.any()) else None)


def _group_query_blocks(full: list[int], masked: list[int], key_block: int) -> list[list[int]]:
    """Query blocks in groups, at most ``GROUP_KEY_TOKENS`` gathered keys per group: members share their number of
    full slots; their masked slots are padded to the largest count, with at most ``PAD_WASTE`` of the group's slots
    being padding."""
    order = sorted(range(len(full)), key=lambda qb: (full[qb], masked[qb], qb))
    groups: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for qb in order:
        if current:
            slots = (full[qb] + masked[qb]) * (len(current) + 1)
            padding = slots - filled - full[qb] - masked[qb]
            if (full[qb] == full[current[0]] and slots * key_block <= GROUP_KEY_TOKENS
                    and padding <= PAD_WASTE * slots):
                current.append(qb)
                filled += full[qb] + masked[qb]
                continue
            groups.append(current)
        current, filled = [qb], full[qb] + masked[qb]
    if current:
        groups.append(current)
    return groups


@byte_cached
def block_sparse_plan(mask: Mask, shape: Shape, num_prefix_tokens: int, query_block: int,
                      key_block: int) -> BlockSparsePlan:
    """The block-sparse plan of ``mask`` on ``shape`` with ``num_prefix_tokens`` prefix tokens (cached)."""
    grid = num_tokens(shape)
    occupancy = _occupancy(mask, shape, query_block, key_block)
    nq, nk = occupancy.present.shape
    prefix_blocks = -(-num_prefix_tokens // key_block)
    prefix_ids = [FULL_TILE] * prefix_blocks
    tiles = [torch.ones(1, query_block, key_block, dtype=torch.bool),
             torch.zeros(1, query_block, key_block, dtype=torch.bool), occupancy.partial]
    if num_prefix_tokens % key_block:
        last = torch.zeros(1, query_block, key_block, dtype=torch.bool)
        last[:, :, : num_prefix_tokens % key_block] = True
        prefix_ids[-1] = 2 + occupancy.partial.shape[0]
        tiles.append(last)
    empty = None
    if occupancy.empty is not None and not num_prefix_tokens:
        empty = F.pad(occupancy.empty, (0, nq * query_block - grid)).view(nq, query_block)
    tiles = torch.cat(tiles)
    tile_rows = tiles.any(dim=2)
    full_lists, masked_lists, masked_ids = [], [], []
    for qb in range(nq):
        keys = occupancy.present[qb].nonzero().flatten()
        ids = occupancy.tile_ids[qb, keys]
        full_lists.append(keys[ids == FULL_TILE].tolist() + list(range(nk, nk + prefix_blocks)))
        masked_lists.append(keys[ids != FULL_TILE].tolist())
        masked_ids.append(ids[ids != FULL_TILE].tolist())
        if prefix_ids and prefix_ids[-1] != FULL_TILE:
            full_lists[-1].pop()
            masked_lists[-1].append(nk + prefix_blocks - 1)
            masked_ids[-1].append(prefix_ids[-1])
    groups = []
    attended = 0
    for members in _group_query_blocks([len(x) for x in full_lists], [len(x) for x in masked_lists], key_block):
        num_full = len(full_lists[members[0]])
        num_masked = max(len(masked_lists[qb]) for qb in members)
        masked_keys = torch.zeros(len(members), num_masked, dtype=torch.long)
        ids = torch.full((len(members), num_masked), EMPTY_TILE, dtype=torch.long)
        for row, qb in enumerate(members):
            masked_keys[row, : len(masked_lists[qb])] = torch.tensor(masked_lists[qb], dtype=torch.long)
            ids[row, : len(masked_ids[qb])] = torch.tensor(masked_ids[qb], dtype=torch.long)
        members_t = torch.tensor(members)
        group_empty = empty[members_t] if empty is not None else None
        if group_empty is not None and not bool(group_empty.any()):
            group_empty = None
        row_empty = None
        if num_full and num_masked:
            row_empty = ~tile_rows[ids].any(dim=1)
            row_empty = row_empty if bool(row_empty.any()) else None
        full_keys = torch.tensor([kb for qb in members for kb in full_lists[qb]], dtype=torch.long)
        groups.append(QueryGroup(members_t, num_full, num_masked, full_keys, masked_keys.flatten(), ids, row_empty,
                                 group_empty))
        attended += len(members) * (num_full + num_masked)
    order = torch.cat([g.query_blocks for g in groups])
    inverse = torch.empty(nq, dtype=torch.long)
    inverse[order] = torch.arange(nq)
    return BlockSparsePlan(query_block, key_block, num_prefix_tokens, grid, nq, nk, tuple(groups), inverse, tiles,
                           attended)


def _blocks(x: Tensor, blocks: int, block: int) -> Tensor:
    """``(BH, T, dim)`` zero-padded to ``blocks * block`` tokens and viewed as ``(BH, blocks, block, dim)``."""
    x = F.pad(x, (0, 0, 0, blocks * block - x.shape[1]))
    return x.view(x.shape[0], blocks, block, x.shape[-1])


def _flash_cpu_ops() -> tuple | None:
    """SDPA's CPU flash kernel with its log-sum-exp (forward and backward), where this torch build has it."""
    ops = torch.ops.aten
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu") and hasattr(
            ops, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        return ops._scaled_dot_product_flash_attention_for_cpu, ops._scaled_dot_product_flash_attention_for_cpu_backward
    return None


class TwoPartAttention(torch.autograd.Function):
    """Softmax attention over the union of two key sets, the second under an additive mask, from two runs of SDPA's
    CPU flash kernel merged by their log-sum-exps:

    ``out = (e^{l_1} o_1 + e^{l_2} o_2) / (e^{l_1} + e^{l_2})``, ``l = log(e^{l_1} + e^{l_2})``.

    Backward runs the flash backward once per part with the merged ``out`` and ``l``, which yields exactly that
    part's share of the gradients (the softmax weights of a part are ``exp(s - l)``). ``row_empty`` marks queries
    that see no key of the second part (their ``l_2`` is -inf).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k1: Tensor, v1: Tensor, k2: Tensor, v2: Tensor, bias: Tensor,
                row_empty: Tensor | None, scale: float | None) -> Tensor:
        flash, _ = _flash_cpu_ops()
        out1, lse1 = flash(q, k1, v1, scale=scale)
        out2, lse2 = flash(q, k2, v2, attn_mask=bias, scale=scale)
        if row_empty is not None:
            lse2 = lse2.masked_fill(row_empty, float("-inf"))
        lse = torch.logaddexp(lse1, lse2)
        w1, w2 = (lse1 - lse).exp().unsqueeze(-1), (lse2 - lse).exp().unsqueeze(-1)
        out = (out1.to(w1.dtype) * w1 + out2.to(w2.dtype) * w2).to(q.dtype)
        ctx.save_for_backward(q, k1, v1, k2, v2, bias, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("visattn block_sparse (two-part merge): double backward (create_graph=True) is not "
                               "implemented; use backend='dense' for gradient penalties")
        _, flash_backward = _flash_cpu_ops()
        q, k1, v1, k2, v2, bias, out, lse = ctx.saved_tensors
        grad = grad.contiguous()
        dq1, dk1, dv1 = flash_backward(grad, q, k1, v1, out, lse, 0.0, False, scale=ctx.scale)
        dq2, dk2, dv2 = flash_backward(grad, q, k2, v2, out, lse, 0.0, False, attn_mask=bias, scale=ctx.scale)
        return dq1 + dq2, dk1, dv1, dk2, dv2, None, None, None


def _two_part_ok(q: Tensor, v: Tensor) -> bool:
    return (q.device.type == "cpu" and q.shape[-1] == v.shape[-1] and _flash_cpu_ops() is not None
            and q.dtype in (torch.float32, torch.float64, torch.bfloat16))


def _no_keys(q_group: Tensor, k_blocks: Tensor, v_blocks: Tensor) -> Tensor:
    """The zero output ``(B * H, blocks, bq, d_v)`` of query blocks that see no key, as a product over an empty key
    set: zero, and still in the graph of q, k and v (zero gradients, no NaN from non-finite inputs), as the dense
    reference gives for fully masked rows."""
    k_none = k_blocks.flatten(1, 2)[:, :0].unsqueeze(1)
    v_none = v_blocks.flatten(1, 2)[:, :0].unsqueeze(1)
    return (q_group @ k_none.transpose(-1, -2)) @ v_none


def run_block_sparse_plan(plan: BlockSparsePlan, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Run a :class:`BlockSparsePlan` on checked ``q, k, v`` (differentiable through SDPA and gathers)."""
    b, h, n, dim = q.shape
    dim_v = v.shape[-1]
    prefix, bq, bk = plan.num_prefix_tokens, plan.query_block, plan.key_block
    device = q.device
    two_part = _two_part_ok(q, v)

    def flat(x: Tensor, lo: int, hi: int) -> Tensor:
        return x[:, :, lo:hi].reshape(b * h, hi - lo, x.shape[-1])

    q_blocks = _blocks(flat(q, prefix, n), plan.num_query_blocks, bq)
    k_blocks, v_blocks = (
        torch.cat([_blocks(flat(x, prefix, n), plan.num_key_blocks, bk),
                   _blocks(flat(x, 0, prefix), -(-prefix // bk), bk)], 1)
        for x in (k, v)
    )
    bias_tiles = torch.zeros(plan.tiles.shape, dtype=q.dtype, device=device)
    bias_tiles = bias_tiles.masked_fill(~plan.tiles.to(device), float("-inf"))

    def gather(blocks: Tensor, keys: Tensor, size: int) -> Tensor:
        return blocks.index_select(1, keys.to(device)).view(b * h, size, -1, blocks.shape[-1])

    outs = []
    for group in plan.groups:
        size = group.query_blocks.shape[0]
        if not group.num_full + group.num_masked:
            outs.append(_no_keys(q_blocks.index_select(1, group.query_blocks.to(device)), k_blocks, v_blocks))
            continue
        q_group = q_blocks.index_select(1, group.query_blocks.to(device))
        k_full, v_full = gather(k_blocks, group.full_keys, size), gather(v_blocks, group.full_keys, size)
        if not group.num_masked:
            outs.append(sdpa(q_group, k_full, v_full, scale=scale))
            continue
        k_masked, v_masked = gather(k_blocks, group.masked_keys, size), gather(v_blocks, group.masked_keys, size)
        bias = bias_tiles[group.masked_tiles.to(device)].transpose(1, 2).reshape(1, size, bq, -1)
        if group.num_full and two_part:
            row_empty = group.masked_row_empty
            row_empty = row_empty.to(device)[None].expand(b * h, -1, -1) if row_empty is not None else None
            outs.append(TwoPartAttention.apply(q_group, k_full, v_full, k_masked, v_masked, bias, row_empty, scale))
            continue
        if group.num_full:
            k_masked, v_masked = torch.cat([k_full, k_masked], 2), torch.cat([v_full, v_masked], 2)
            bias = torch.cat([bias.new_zeros(1, size, bq, k_full.shape[2]), bias], 3)
        empty = group.empty.to(device)[None, :, :, None] if group.empty is not None else None
        if empty is not None:
            bias = bias.masked_fill(empty, 0.0)
        out = sdpa(q_group, k_masked, v_masked, attn_mask=bias, scale=scale)
        outs.append(out.masked_fill(empty, 0.0) if empty is not None else out)
    out = torch.cat(outs, 1).index_select(1, plan.inverse.to(device))
    out = out.reshape(b, h, plan.num_query_blocks * bq, dim_v)[:, :, : plan.grid_tokens]
    if not prefix:
        return out
    prefix_out = sdpa(q[:, :, :prefix], k, v, scale=scale)
    return torch.cat([prefix_out, out], dim=2)


def default_blocks(mask: Mask, shape: Shape) -> tuple[int, int]:
    """(query block, key block): the mask's own blocks for Radial Attention's released rule; otherwise query blocks
    of about a quarter of a frame (the key set of a query block is the union over its queries, so blocks much
    taller than the narrowest bands waste work), between ``MIN_BLOCK`` and ``QUERY_BLOCK`` tokens, and key blocks
    half as tall, at most ``KEY_BLOCK``."""
    if isinstance(mask, RadialMask) and mask.rule == "code":
        return mask.block_size, mask.block_size
    frame = num_tokens(shape[1:]) if isinstance(mask, RadialMask) else num_tokens(shape)
    query = min(QUERY_BLOCK, max(MIN_BLOCK, 1 << max(0, (frame // 4).bit_length() - 1)))
    return query, max(MIN_BLOCK // 2, min(KEY_BLOCK, query // 2))


@byte_cached
def block_tiles(mask: Mask, shape: Shape, num_prefix_tokens: int, query_block: int, key_block: int) -> TileList:
    """The mask's present blocks as a :class:`~visattn.ops.engines.fused_tiles.TileList` for the fused tile kernel: per
    query block (split into tiles of at most ``MAX_TILE_QUERIES`` queries), the prefix keys, each run of
    consecutive full key blocks as one unmasked segment, and each partial block as a segment under its exact
    tile mask. Empty blocks appear nowhere."""
    grid, prefix = num_tokens(shape), num_prefix_tokens
    occupancy = _occupancy(mask, shape, query_block, key_block)
    nq = occupancy.present.shape[0]
    tiles = []
    for qb in range(nq):
        q_lo, q_hi = qb * query_block, min(grid, (qb + 1) * query_block)
        blocks = occupancy.present[qb].nonzero().flatten().tolist()
        ids = occupancy.tile_ids[qb].tolist()
        for t_lo in range(q_lo, q_hi, MAX_TILE_QUERIES):
            t_hi = min(q_hi, t_lo + MAX_TILE_QUERIES)
            segments = [(np.arange(prefix), None)] if prefix else []
            run_start = None
            for i, kb in enumerate(blocks):
                k_lo, k_hi = kb * key_block, min(grid, (kb + 1) * key_block)
                if ids[kb] == FULL_TILE:
                    run_start = k_lo if run_start is None else run_start
                    if i + 1 == len(blocks) or blocks[i + 1] != kb + 1 or ids[blocks[i + 1]] != FULL_TILE:
                        segments.append((prefix + np.arange(run_start, k_hi), None))
                        run_start = None
                    continue
                tile = occupancy.partial[ids[kb] - 2].numpy()
                rows = tile[t_lo - q_lo : t_hi - q_lo, : k_hi - k_lo]
                if rows.any():
                    segments.append((prefix + np.arange(k_lo, k_hi), rows))
            tiles.append((prefix + np.arange(t_lo, t_hi), segments))
    return build_tiles(tiles)
