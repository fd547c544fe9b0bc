"""Fused tile attention in C++: query tiles against key segments, register-blocked, online softmax.

Paper: Hassani et al., "Faster Neighborhood Attention" (arXiv 2403.04690) for the tiling of masked attention into
GEMM tiles, and Dao et al., "FlashAttention" (arXiv 2205.14135) for the online softmax that folds key chunks
into running row maxima ``m`` and sums ``l``:

``S = scale * Q_t K_c^T (masked to -inf), m' = max(m, rowmax S), l' = l e^{m - m'} + rowsum e^{S - m'},
O' = O e^{m - m'} + e^{S - m'} V_c``, and ``out = O / l`` at the end.

A :class:`TileList` names, per tile, its query tokens and its key segments, each segment with an optional bool
mask ``[tile queries, segment keys]``. :func:`progression_tiles` builds one for masks whose per-axis key sets are
arithmetic progressions (window, grid, halo, axial, strip, neighborhood): per axis the coordinates are ordered so
that those with equal key sets are adjacent (MaxViT's grid groups become contiguous), cut into tiles of ``T_a``,
and an N-D tile's keys are the product of its per-axis key unions under the outer AND of per-axis membership
tables, which is all-True (no mask) for windows and grids. Scores live in per-thread scratch only.

Backward: the kernel also computes the gradients, FlashAttention-2's backward (Dao, arXiv 2307.08691) recomputing
``P = e^{S - lse}`` from the forward's log-sum-exp: ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P (dP - D)`` with
``D = rowsum(dO * O)``, ``dQ = scale dS K``, ``dK = scale dS^T Q``. Where tiles share no key
(:attr:`TileList.keys_disjoint`: windows and grids) every key's gradient is added by its one tile; elsewhere each
thread adds into its own zeroed ``dK, dV`` and the copies are summed.

These functions run on checked CPU tensors; :mod:`visattn.ops.engines.kernel_ops` wraps them as custom operators
and :mod:`visattn.ops.dispatch` decides when they run.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..._cache import byte_cached
from ...masks.axis import Progression
from .. import native
from ..native import DTYPE_SUFFIX, call, row_major, strides
from .layout import LocalLayout

__all__ = ["TileList", "bitmap_tiles", "build_tiles", "disjoint_tile_sizes", "progression_tiles", "run_tiles",
           "run_tiles_backward", "training_tiles"]

KEY_CHUNK = 64
MASK_ALIGN = 16
TAIL_ROWS = 3
MAX_TILE_QUERIES = 64
MAX_TRAINING_TILE_QUERIES = 256
MAX_GRADIENT_COPIES = 8
GRADIENT_COPY_BYTES = 1 << 30


@dataclass(frozen=True, eq=False)
class TileList:
    """Tiles in CSR form (int64 tensors): tile ``t`` has queries ``q_idx[q_ptr[t]:q_ptr[t+1]]`` (token indices)
    and segments ``seg_ptr[t]:seg_ptr[t+1]``; segment ``s`` has keys ``k_idx[key_ptr[s]:key_ptr[s+1]]`` and its
    mask at ``masks[mask_off[s]:]``, or no mask where ``mask_off[s] < 0``. Masks are stored key-major, as the kernel
    reads them (one query per vector lane): uint8 ``[keys, queries]`` with the query axis zero-padded to a multiple
    of ``MASK_ALIGN`` (``kMaskAlign`` in ``csrc/common.h``)."""

    q_ptr: Tensor
    q_idx: Tensor
    seg_ptr: Tensor
    key_ptr: Tensor
    k_idx: Tensor
    mask_off: Tensor
    masks: Tensor
    tile_sizes: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return len(self.q_ptr) - 1

    @property
    def cost(self) -> float:
        """:func:`tile_cost` summed over the tiles (per batch and head)."""
        nq = torch.diff(self.q_ptr)
        tile_of_seg = torch.repeat_interleave(torch.arange(self.count), torch.diff(self.seg_ptr))
        keys = torch.zeros(self.count, dtype=torch.int64).index_add_(0, tile_of_seg, torch.diff(self.key_ptr))
        return float(sum(tile_cost(int(r), int(k)) for r, k in zip(nq, keys, strict=True)))

    @functools.cached_property
    def keys_disjoint(self) -> bool:
        """Whether no key token appears twice (in two tiles or segments): the backward then needs no per-thread
        gradient copies."""
        return int(torch.unique(self.k_idx).numel()) == int(self.k_idx.numel())

    @functools.cached_property
    def queries_disjoint(self) -> bool:
        """Whether no query token appears in two tiles."""
        return int(torch.unique(self.q_idx).numel()) == int(self.q_idx.numel())

    @property
    def score_elements(self) -> int:
        """Scores computed per batch and head, padding included (:func:`padded_rows` queries a tile; keys are not
        padded)."""
        nq_pad = torch.tensor([padded_rows(rows) for rows in torch.diff(self.q_ptr).tolist()], dtype=torch.int64)
        tile_of_seg = torch.repeat_interleave(torch.arange(self.count), torch.diff(self.seg_ptr))
        return int((nq_pad[tile_of_seg] * torch.diff(self.key_ptr)).sum())


def build_tiles(tiles: list[tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray | None]]]],
                tile_sizes: tuple[int, ...] = ()) -> TileList:
    """A :class:`TileList` from ``[(query tokens, [(segment keys, bool mask or None), ...]), ...]``."""
    q_ptr, seg_ptr, key_ptr, mask_off = [0], [0], [0], []
    q_parts, k_parts, m_parts = [], [], []
    mask_len = 0
    for queries, segments in tiles:
        q_parts.append(np.asarray(queries, dtype=np.int64))
        q_ptr.append(q_ptr[-1] + len(queries))
        for keys, mask in segments:
            k_parts.append(np.asarray(keys, dtype=np.int64))
            key_ptr.append(key_ptr[-1] + len(keys))
            if mask is None or mask.all():
                mask_off.append(-1)
            else:
                mask_off.append(mask_len)
                stored = np.zeros((len(keys), -(-len(queries) // MASK_ALIGN) * MASK_ALIGN), dtype=np.uint8)
                stored[:, : len(queries)] = np.asarray(mask, dtype=bool).T
                m_parts.append(stored.reshape(-1))
                mask_len += stored.size
        seg_ptr.append(seg_ptr[-1] + len(segments))

    def cat(parts: list[np.ndarray], dtype: type) -> Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype))

    return TileList(torch.tensor(q_ptr), cat(q_parts, np.int64), torch.tensor(seg_ptr), torch.tensor(key_ptr),
                    cat(k_parts, np.int64), torch.tensor(mask_off, dtype=torch.int64), cat(m_parts, np.uint8),
                    tile_sizes)


def bitmap_tiles(bitmap: np.ndarray, block: int, num_tokens: int) -> TileList:
    """Tiles of a block bitmap ``[nb, nb]`` (True = compute the tile; PARO's static block mask): one tile per query
    block of ``block`` tokens, one unmasked segment per run of consecutive kept key blocks (cut at
    ``num_tokens``). Built without Python loops."""
    nb = bitmap.shape[0]
    edges = np.diff(np.pad(bitmap.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    lo = starts * block
    lengths = np.minimum(ends * block, num_tokens) - lo
    key_ptr = np.concatenate([[0], np.cumsum(lengths)])
    k_idx = np.repeat(lo - key_ptr[:-1], lengths) + np.arange(key_ptr[-1])
    q_len = np.minimum(np.arange(1, nb + 1) * block, num_tokens) - np.arange(nb) * block
    seg_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=nb))])

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    return TileList(t(np.concatenate([[0], np.cumsum(q_len)])), t(np.arange(num_tokens)), t(seg_ptr), t(key_ptr),
                    t(k_idx), torch.full((len(lengths),), -1, dtype=torch.int64), torch.zeros(0, dtype=torch.uint8),
                    (block,))


@dataclass(frozen=True)
class _AxisTiling:
    members: list[np.ndarray]
    unions: list[np.ndarray]
    tables: list[np.ndarray]


def _order(progression: Progression) -> np.ndarray:
    """Coordinates ordered by (step, start mod step, start, count): equal key sets become adjacent, and so do the
    coordinates of one dilation group or one MaxViT grid cell."""
    start, count, step = progression
    return np.lexsort((count, start, start % step, step))


def _axis_tiling(progression: Progression, size: int) -> _AxisTiling:
    start, count, step = progression
    order = _order(progression)
    members, unions, tables = [], [], []
    for lo in range(0, len(order), size):
        coords = np.sort(order[lo : lo + size])
        keys = [start[c] + step[c] * np.arange(count[c]) for c in coords]
        union = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
        offset = union[None, :] - start[coords][:, None]
        table = (offset >= 0) & (offset % step[coords][:, None] == 0) & (offset // step[coords][:, None]
                                                                          < count[coords][:, None])
        members.append(coords)
        unions.append(union)
        tables.append(table)
    return _AxisTiling(members, unions, tables)


def _candidate_sizes(progression: Progression, length: int) -> list[int]:
    start, count, step = progression
    keys = np.stack([start, count, step], 1)[_order(progression)]
    change = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1))
    runs = np.diff(np.concatenate([[0], change + 1, [length]]))
    group = int(np.bincount(runs).argmax()) if len(runs) else 1
    sizes = {1, 2, 4, 8, 16, 32, 64, group, 2 * group}
    return sorted(s for s in sizes if 1 <= s <= min(length, MAX_TILE_QUERIES))


def _axis_cost(progression: Progression, size: int) -> tuple[int, float]:
    """(tiles, estimated mean key union) along one axis with tiles of ``size`` consecutive ordered coordinates:
    the union is bounded by the members' total keys and by their span (over the step where all members share
    step and phase); vectorised, the chosen tiling is then built exactly."""
    start, count, step = (a[_order(progression)] for a in progression)
    last = start + (np.maximum(count, 1) - 1) * step
    cuts = np.arange(0, len(start), size)
    total = np.add.reduceat(count, cuts)
    span = np.maximum.reduceat(last, cuts) - np.minimum.reduceat(start, cuts)
    phase = start % step
    aligned = ((np.maximum.reduceat(phase, cuts) == np.minimum.reduceat(phase, cuts))
               & (np.maximum.reduceat(step, cuts) == np.minimum.reduceat(step, cuts)))
    union = np.minimum(total, np.where(aligned, span // np.minimum.reduceat(step, cuts), span) + 1)
    return len(cuts), float(union.mean())


@functools.cache
def row_block() -> int:
    """float32 queries per vector of the kernels' ISA level (16 for AVX-512, 8 for AVX2, 4 for NEON and generic
    builds): the unit a tile's query rows are padded to."""
    return native.vector_bytes() // 4


def tail_rows(rows: int) -> int:
    """Queries of a tile of ``rows`` that the kernel runs one at a time: up to ``TAIL_ROWS`` past a multiple of
    :func:`row_block` (``kTailRows`` in ``csrc/tile_common.h``), else none."""
    block = row_block()
    return rows % block if rows % block <= TAIL_ROWS else 0


def padded_rows(rows: int) -> int:
    """Query rows the kernel computes for a tile of ``rows`` queries: the vector part padded to a multiple of
    :func:`row_block`, plus the :func:`tail_rows` unpadded."""
    tail = tail_rows(rows)
    block = row_block()
    return tail + -(-(rows - tail) // block) * block


def tile_cost(rows: int, keys: int) -> float:
    """Modelled cost of one tile in dense-SDPA pair-times (2 cores, float32, head_dim 32, measured with
    ``benchmarks/structured.py``): 1.4 per score in a vector of queries, padding included, 5.6 per score of a tail
    row run alone (its dot products reduce across lanes), plus 8 per key (its copy, and the masking and softmax fold
    of each key row). Checked by timing every candidate tiling of 1-D, 2-D and 3-D neighborhoods and of halo masks:
    the model's choice was the fastest or within 3% of it."""
    tail = tail_rows(rows)
    return 1.4 * (padded_rows(rows) - tail) * keys + 5.6 * tail * keys + 8.0 * keys


def _choose_sizes(layout: LocalLayout, prefix: int) -> tuple[int, ...]:
    """Tile sizes minimising :func:`tile_cost` over all tiles, at most 64 queries a tile."""
    per_axis = [{s: _axis_cost(p, s) for s in _candidate_sizes(p, length)}
                for p, length in zip(layout.axes, layout.shape, strict=True)]
    best, best_cost = None, math.inf
    for sizes in itertools.product(*[sorted(c) for c in per_axis]):
        queries = math.prod(sizes)
        if queries > MAX_TILE_QUERIES:
            continue
        tiles = math.prod(per_axis[a][s][0] for a, s in enumerate(sizes))
        keys = math.prod(per_axis[a][s][1] for a, s in enumerate(sizes)) + prefix
        cost = tiles * tile_cost(queries, math.ceil(keys))
        if cost < best_cost:
            best, best_cost = sizes, cost
    return best


def _key_groups(progression: Progression) -> int | None:
    """Along one axis, the size of the groups of coordinates that share a key set, where all groups have one size and
    their key sets are disjoint (window, grid, axial); else None."""
    start, count, step = (a[_order(progression)] for a in progression)
    keys = np.stack([start, count, step], 1)
    first = np.concatenate([[0], np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1])
    runs = np.diff(np.concatenate([first, [len(start)]]))
    if len(set(runs.tolist())) != 1:
        return None
    members = np.concatenate([s + t * np.arange(c) for s, c, t in zip(start[first], count[first], step[first],
                                                                      strict=True)])
    return int(runs[0]) if len(np.unique(members)) == len(members) else None


@byte_cached
def disjoint_tile_sizes(layout: LocalLayout) -> tuple[int, ...] | None:
    """Per-axis tile sizes whose tiles share no key (each tile one window, grid cell or line), or None where the
    mask has none within ``MAX_TRAINING_TILE_QUERIES`` queries a tile. Training on them needs no per-thread gradient
    copies and measured 14-29% faster than on the cost model's 64-query tiles (16 x 16 windows and grids, axial
    lines of 128), whose forward alone is 5-10% faster."""
    sizes = [_key_groups(p) for p in layout.axes]
    if any(s is None for s in sizes) or math.prod(sizes) > MAX_TRAINING_TILE_QUERIES:
        return None
    return tuple(sizes)


@byte_cached
def progression_tiles(layout: LocalLayout, num_prefix_tokens: int = 0, tile_sizes: tuple[int, ...] | None = None,
                      prefix_queries: bool = False) -> TileList:
    """The :class:`TileList` of a progression layout: the grid queries (prefix keys are a first, unmasked segment of
    every tile), and with ``prefix_queries`` one more tile of the prefix queries against every key (they attend
    densely), so that one kernel call computes every row. ``tile_sizes`` per axis, or None for the cost model's
    choice."""
    prefix = num_prefix_tokens
    sizes = tile_sizes if tile_sizes is not None else _choose_sizes(layout, prefix)
    tilings = [_axis_tiling(p, s) for p, s in zip(layout.axes, sizes, strict=True)]
    strides = [math.prod(layout.shape[a + 1 :]) for a in range(len(layout.shape))]
    prefix_segment = [(np.arange(prefix), None)] if prefix else []
    tiles = []
    for combo in itertools.product(*[range(len(t.members)) for t in tilings]):
        queries = keys = np.zeros(1, dtype=np.int64)
        mask = np.ones((1, 1), dtype=bool)
        for tiling, index, stride in zip(tilings, combo, strides, strict=True):
            queries = (queries[:, None] + tiling.members[index][None, :] * stride).reshape(-1)
            keys = (keys[:, None] + tiling.unions[index][None, :] * stride).reshape(-1)
            table = tiling.tables[index]
            mask = (mask[:, None, :, None] & table[None, :, None, :]).reshape(len(queries), len(keys))
        tiles.append((queries + prefix, [*prefix_segment, (keys + prefix, mask)]))
    if prefix_queries and prefix:
        tiles.append((np.arange(prefix), [(np.arange(prefix + math.prod(layout.shape)), None)]))
    return build_tiles(tiles, tuple(sizes))


def run_tiles(q: Tensor, k: Tensor, v: Tensor, tiles: TileList, out: Tensor, scale: float,
              lse: Tensor | None = None) -> None:
    """Write the rows of ``out`` (``[B, heads, N, dv]``) that ``tiles`` names (and of ``lse``, ``[B, heads, N]``)."""
    b, h, _, dim = q.shape
    call("tile_attention", f"visattn_tile_forward_{DTYPE_SUFFIX[q.dtype]}", q, k, v, out, lse, b, h, dim,
         v.shape[-1], strides(q), strides(k), strides(v), strides(out), strides(out if lse is None else lse),
         tiles.count, tiles.q_ptr, tiles.q_idx, tiles.seg_ptr, tiles.key_ptr, tiles.k_idx, tiles.mask_off,
         tiles.masks, scale)


def gradient_copies() -> int:
    """Threads, and so per-thread ``dk, dv`` copies, of the backward over tiles that share keys."""
    return min(torch.get_num_threads(), MAX_GRADIENT_COPIES)


def gradient_copy_bytes(k: Tensor, v: Tensor) -> int:
    """Bytes of the per-thread ``dk, dv`` copies the backward over tiles that share keys would hold."""
    return gradient_copies() * (k.numel() * k.element_size() + v.numel() * v.element_size())


def run_tiles_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor, tiles: TileList,
                       scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` of the attention :func:`run_tiles` computed (with ``lse``) over ``tiles``; rows no tile names
    get zero. Tiles that share keys cost one zeroed copy of ``dk`` and ``dv`` per thread, on at most
    ``MAX_GRADIENT_COPIES`` threads (one under ``torch.use_deterministic_algorithms(True)``: which tiles a thread
    adds up depends on scheduling); where every row is in exactly one tile the gradients are written once, into
    uninitialised tensors."""
    grad_out = row_major(grad_out)
    n = q.shape[2]
    every_query_once = tiles.queries_disjoint and tiles.q_idx.numel() == n
    every_key_once = tiles.keys_disjoint and tiles.k_idx.numel() == k.shape[2]
    dq = q.new_empty(q.shape) if every_query_once else q.new_zeros(q.shape)
    shared = not tiles.keys_disjoint
    threads = torch.get_num_threads()
    if shared:
        threads = 1 if torch.are_deterministic_algorithms_enabled() else gradient_copies()
        dk_parts, dv_parts = k.new_zeros(threads, *k.shape), v.new_zeros(threads, *v.shape)
        dk, dv = dk_parts[0], dv_parts[0]
    else:
        dk, dv = (k.new_empty(k.shape), v.new_empty(v.shape)) if every_key_once else (k.new_zeros(k.shape),
                                                                                      v.new_zeros(v.shape))
    b, h, _, dim = q.shape
    call("tile_attention_backward", f"visattn_tile_backward_{DTYPE_SUFFIX[q.dtype]}", q, k, v, out, grad_out, lse,
         dq, dk, dv, b, h, dim, v.shape[-1], strides(q), strides(k), strides(v), strides(out), strides(grad_out),
         strides(lse), strides(dq), strides(dk), strides(dv), tiles.count, tiles.q_ptr, tiles.q_idx, tiles.seg_ptr,
         tiles.key_ptr, tiles.k_idx, tiles.mask_off, tiles.masks, k.numel() if shared else 0,
         v.numel() if shared else 0, 0 if every_key_once else 1, scale, threads=threads)
    if shared:
        dk, dv = dk_parts.sum(0), dv_parts.sum(0)
    return dq, dk, dv


def training_tiles(layout: LocalLayout, num_prefix_tokens: int, k: Tensor, v: Tensor) -> TileList | None:
    """The tiles that train ``layout`` (:func:`disjoint_tile_sizes` where the mask has them), or None where the
    per-query kernel should train instead: tiles that share keys when deterministic algorithms are requested (the
    per-thread ``dK, dV`` copies are filled in scheduling order), when the backward would leave threads idle (more
    than ``MAX_GRADIENT_COPIES``) or when its copies would exceed ``GRADIENT_COPY_BYTES``."""
    tiles = progression_tiles(layout, num_prefix_tokens, disjoint_tile_sizes(layout))
    if tiles.keys_disjoint:
        return tiles
    if (torch.are_deterministic_algorithms_enabled() or torch.get_num_threads() > MAX_GRADIENT_COPIES
            or gradient_copy_bytes(k, v) > GRADIENT_COPY_BYTES):
        return None
    return tiles
