"""The tile plan: how the tiled engine cuts a separable (or sliding-window) mask on a grid into SDPA tiles.

Every axis is cut into query tiles of ``T_a`` slots that read key windows of ``W_a`` slots (see
:mod:`visattn.ops.engines.tile_axis`). An N-D tile is the product of one tile per axis: ``Tq = prod T_a`` queries
against ``Wk = prod W_a + P`` keys (the P prefix tokens are appended to every tile), and its bool mask is the
outer AND of the per-axis ``(T_a x W_a)`` sub-tables. Scores held at once are therefore
``O(N * prod W_a)`` per batch and head, never ``N^2``.

Keys are laid out so that one axis (the *unfold axis* u) needs no copy per tile: along u, tile i reads the key
slots ``[i T_u + c_u, i T_u + c_u + W_u)`` of one buffer, an overlapping strided view (``Tensor.unfold``); the
other axes' windows are copied (``W_a / T_a`` times the keys). To keep one stride across tiles of different
groups, each run of u-tiles is followed by ``ceil(W_u / T_u) - 1`` dummy tiles whose queries are discarded.
With prefix tokens the keys are copied per tile instead (``unfold_axis = None``).

Masks: consecutive tiles with the same mask form a run, and each run is one SDPA call with one ``[Tq, Wk]``
mask (none where it is all-True); when there would be more than ``MAX_RUNS`` runs, one call takes a per-tile
mask ``[tiles, Tq, Wk]`` instead (shared by batches and heads).

Tile sizes come from a cost model in units of one score (one query-key pair: ``2 * head_dim`` multiply-adds and
an exp). ``scaled_dot_product_attention``'s CPU kernel splits each tile into blocks of 32 queries (64 from 192,
256 from 768) and, per block, pays a fixed ``BLOCK_COST`` plus ``KEY_COST`` per key on top of the scores (its
two small GEMMs re-read the key tile); a mask adds ``MASK_COST`` per score and every gathered token row (queries,
keys, values, outputs) ``COPY_COST``. The constants were fitted to SDPA timings of 45 tile shapes
(``Tq`` 1..256, ``Wk`` 32..1024, float32, head_dim 32, 2 threads of an AVX-512 Xeon): 1.76 us per block,
31.6 ns per key per block, 2.55 ns per score, about 28 ns per gathered row. ``benchmarks/structured.py`` prints
the plan it ran.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..._cache import byte_cached, cache_get, cache_put
from ..._checks import Shape, num_tokens
from ...masks import Mask, SeparableMask, SequenceMask
from ...masks.axis import AxisRule
from .tile_axis import AxisTiles, axis_layout

BLOCK_COST = 690.0
KEY_COST = 12.4
MASK_COST = 0.3
COPY_COST = 11.0
MAX_RUNS = 16


@dataclass(frozen=True, eq=False)
class MaskRun:
    """Tiles ``[start, stop)`` share ``allowed`` (``[Tq, Wk]`` bool, or ``[stop - start, Tq, Wk]`` per tile), or
    see every key of their tile (``allowed is None``)."""

    start: int
    stop: int
    allowed: Tensor | None


class PlanTensors(NamedTuple):
    """A plan's tensors on one device: indices, the empty-query mask and one SDPA mask per run."""

    query_index: Tensor
    token_slot: Tensor
    key_index: Tensor
    empty: Tensor | None
    masks: tuple[Tensor | None, ...]


@dataclass(frozen=True, eq=False)
class TilePlan:
    """A tiling of a mask on ``shape`` with ``num_prefix_tokens`` prefix tokens (index tensors live on the CPU).

    Attributes:
        axes: the per-axis tiling, in axis order.
        unfold_axis: the axis whose key windows are a strided view, or None when keys are copied per tile.
        dummy_tiles: dummy tiles after each run of tiles along the unfold axis.
        num_tiles, tile_queries, tile_keys: the SDPA problem per batch and head: ``num_tiles`` tiles of
            ``tile_queries`` queries against ``tile_keys`` keys (prefix keys included).
        query_index: ``[num_tiles * tile_queries]`` grid token (index after the prefix) of every query slot;
            padding and dummy slots read grid token 0.
        token_slot: ``[prod(shape)]`` query slot of every grid token.
        query_identity: the query slots are the grid tokens in order (no gather needed).
        key_index: token index (prefix included) of every gathered key row; the key tiles are a view of them.
        key_identity: ``key_index`` is every token in order (no gather needed).
        unfold_window, unfold_step, unfold_rest: the unfold axis' window and tile size, and the key slots of
            the other axes per unfold slot (1, 1, tile_keys without an unfold axis).
        runs: the mask runs (see the module docstring).
        empty: ``[num_tiles * tile_queries]`` bool for grid queries that see no key (their output is 0), or None.
    """

    shape: Shape
    num_prefix_tokens: int
    axes: tuple[AxisTiles, ...]
    unfold_axis: int | None
    dummy_tiles: int
    num_tiles: int
    tile_queries: int
    tile_keys: int
    query_index: Tensor
    token_slot: Tensor
    query_identity: bool
    key_index: Tensor
    key_identity: bool
    unfold_window: int
    unfold_step: int
    unfold_rest: int
    runs: tuple[MaskRun, ...]
    empty: Tensor | None

    @property
    def tile_sizes(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def windows(self) -> tuple[int, ...]:
        return tuple(a.window for a in self.axes)

    @property
    def score_elements(self) -> int:
        """Scores computed per batch and head: ``num_tiles * tile_queries * tile_keys`` = O(N prod W_a)."""
        return self.num_tiles * self.tile_queries * self.tile_keys

    @property
    def key_rows(self) -> int:
        """Key (and value) rows gathered per batch and head."""
        return self.key_index.numel()

    @property
    def mask_elements(self) -> int:
        """Elements of the masks the plan holds (shared by every batch and head)."""
        return sum(r.allowed.numel() for r in self.runs if r.allowed is not None)

    def tensors(self, dtype: torch.dtype, device: torch.device) -> PlanTensors:
        """The index tensors on ``device`` and the runs' 0 / -inf SDPA masks in ``dtype``, kept per pair in the
        byte-bounded cache (:func:`visattn.clear_caches`)."""
        if torch.compiler.is_compiling():
            return self._build_tensors(dtype, device)
        key = ("TilePlan.tensors", self, dtype, device)
        found, value = cache_get(key)
        if found:
            return value[1]
        return cache_put(key, (self, self._build_tensors(dtype, device)))[1]

    def _build_tensors(self, dtype: torch.dtype, device: torch.device) -> PlanTensors:
        masks = []
        for run in self.runs:
            if run.allowed is None:
                masks.append(None)
                continue
            bias = torch.zeros(run.allowed.shape, dtype=dtype, device=device)
            bias.masked_fill_(~run.allowed.to(device), float("-inf"))
            masks.append(bias.view(1, -1, self.tile_queries, self.tile_keys))
        empty = None if self.empty is None else self.empty.to(device)[:, None]
        return PlanTensors(self.query_index.to(device), self.token_slot.to(device), self.key_index.to(device),
                           empty, tuple(masks))

    def describe(self) -> str:
        """One line: tile and window per axis, unfold axis, SDPA problem and score elements per batch-head."""
        return (f"tiles={self.tile_sizes} windows={self.windows} unfold_axis={self.unfold_axis} "
                f"Tq={self.tile_queries} Wk={self.tile_keys} tiles/bh={self.num_tiles} runs={len(self.runs)} "
                f"scores/bh={self.score_elements}")


def mask_axis_rules(mask: Mask, shape: Shape) -> tuple[Shape, tuple[AxisRule, ...]]:
    """The grid and per-axis rules the engine tiles: a separable mask's own, or a sequence mask's rule on the
    flattened index."""
    if isinstance(mask, SeparableMask):
        return shape, tuple(mask.axis_rules(shape))
    if isinstance(mask, SequenceMask):
        return (num_tokens(shape),), (mask.rule(),)
    raise TypeError(f"mask must be a SeparableMask or SequenceMask for the tiled engine, got {type(mask).__name__}")


@byte_cached
def tile_plan(mask: Mask, shape: Shape, num_prefix_tokens: int = 0, tile_sizes: tuple[int, ...] | None = None,
              unfold: bool = True) -> TilePlan:
    """Plan the tiled engine for ``mask`` on ``shape`` (cached; masks are immutable).

    Args:
        mask: a :class:`~visattn.masks.SeparableMask` or :class:`~visattn.masks.SequenceMask`.
        shape: the grid (already checked by ``mask.bind``).
        num_prefix_tokens: prefix tokens in front of the grid.
        tile_sizes: query tile size per tiled axis (one axis for a sequence mask); None picks them with the
            cost model.
        unfold: allow the strided key layout along one axis (else keys are copied per tile).
    """
    grid, rules = mask_axis_rules(mask, shape)
    layouts = [axis_layout(rule, length) for rule, length in zip(rules, grid, strict=True)]
    if tile_sizes is None:
        candidates = [layout.tile_sizes for layout in layouts]
    else:
        if len(tile_sizes) != len(grid) or any(isinstance(t, bool) or not isinstance(t, int) or t < 1
                                               for t in tile_sizes):
            raise ValueError(f"tile_sizes must hold one int >= 1 per tiled axis ({len(grid)}), got {tile_sizes!r}")
        candidates = [(t,) for t in tile_sizes]
    options = [[(layout.tiles(t, affine=True), layout.tiles(t, affine=False)) for t in cands]
               for layout, cands in zip(layouts, candidates, strict=True)]
    unfold_choices: list[int | None] = list(range(len(grid))) if unfold and num_prefix_tokens == 0 else [None]
    choices = [(tuple(pair[0] if i == u else pair[1] for i, pair in enumerate(combo)), u)
               for combo in itertools.product(*options) for u in unfold_choices]
    axes, u = min(choices, key=lambda choice: plan_cost(choice[0], choice[1], num_prefix_tokens))
    return _build(mask, grid, num_prefix_tokens, axes, u)


def _outer_tiles(axes: tuple[AxisTiles, ...], u: int) -> int:
    """Tile runs along the unfold axis: tiles of the other axes times the unfold axis' groups."""
    return math.prod(a.groups * a.count for i, a in enumerate(axes) if i != u) * axes[u].groups


def _dummy_tiles(axes: tuple[AxisTiles, ...], u: int | None) -> int:
    if u is None or _outer_tiles(axes, u) == 1:
        return 0
    return max(0, -(-axes[u].window // axes[u].size) - 1)


def _key_buffer(axes: tuple[AxisTiles, ...], u: int, dummy: int) -> tuple[int, int]:
    """Slots per run of the unfold axis' key buffer, and the slack slots after the last run."""
    a = axes[u]
    if _outer_tiles(axes, u) > 1:
        return (a.count + dummy) * a.size, max(0, a.window - a.size)
    return (a.count - 1) * a.size + a.window, 0


def sdpa_blocks(tile_queries: int) -> int:
    """Query blocks SDPA's CPU kernel splits a tile of ``tile_queries`` queries into."""
    split = 256 if tile_queries >= 768 else 64 if tile_queries >= 192 else 32
    return -(-tile_queries // split)


def plan_cost(axes: tuple[AxisTiles, ...], u: int | None, num_prefix_tokens: int) -> float:
    """Modelled cost, in scores, of running the tiles ``axes`` with unfold axis ``u`` (see the module docstring)."""
    dummy = _dummy_tiles(axes, u)
    tiles = math.prod(a.groups * (a.count + (dummy if i == u else 0)) for i, a in enumerate(axes))
    tq = math.prod(a.size for a in axes)
    wk = math.prod(a.window for a in axes) + num_prefix_tokens
    scores = tiles * tq * wk
    if u is None:
        key_rows = tiles * wk
    else:
        slots, slack = _key_buffer(axes, u, dummy)
        key_rows = (_outer_tiles(axes, u) * slots + slack) * math.prod(a.window for i, a in enumerate(axes) if i != u)
    copies = 2 * key_rows + 2 * tiles * tq
    masked = any(a.window > a.size or a.window * a.count > a.layout.group_length for a in axes)
    blocks = tiles * sdpa_blocks(tq)
    return scores * (1 + MASK_COST * masked) + blocks * (BLOCK_COST + KEY_COST * wk) + COPY_COST * copies


def _place(t: np.ndarray, positions: list[int], ndim: int) -> np.ndarray:
    """View ``t`` with its dims at increasing ``positions`` of an ``ndim``-dim broadcast shape."""
    sizes = [1] * ndim
    for p, s in zip(positions, t.shape, strict=True):
        sizes[p] = s
    return t.reshape(sizes)


def _tokens(parts: list[tuple[np.ndarray, list[int]]], grid: Shape, prefix: int) -> tuple[np.ndarray, np.ndarray]:
    """Token index (and validity) of the slots whose per-axis coordinates are ``parts`` (one per axis, with the
    positions of their dims in a common broadcast shape); invalid slots read token 0."""
    ndim = max(max(pos) for _, pos in parts) + 1
    token, valid = np.zeros([1] * ndim, np.int64), np.ones([1] * ndim, bool)
    for axis, (real, pos) in enumerate(parts):
        placed = _place(real, pos, ndim)
        token = token + placed * math.prod(grid[axis + 1 :])
        valid = valid & (placed >= 0)
    token, valid = np.broadcast_arrays(token, valid)
    return np.where(valid, token + prefix, 0), valid


def _mask_runs(allowed: np.ndarray) -> tuple[MaskRun, ...]:
    """Runs of consecutive tiles with equal masks (at most ``MAX_RUNS``), else one run with per-tile masks."""
    tiles = allowed.shape[0]
    flat = allowed.reshape(tiles, -1)
    changes = np.flatnonzero((flat[1:] != flat[:-1]).any(-1)) + 1
    bounds = [0, *changes.tolist(), tiles]
    if len(bounds) - 1 > MAX_RUNS:
        return (MaskRun(0, tiles, torch.from_numpy(allowed.copy())),)
    runs = []
    for start, stop in itertools.pairwise(bounds):
        tile = allowed[start]
        runs.append(MaskRun(start, stop, None if tile.all() else torch.from_numpy(tile.copy())))
    return tuple(runs)


def _build(mask: Mask, grid: Shape, prefix: int, axes: tuple[AxisTiles, ...], u: int | None) -> TilePlan:
    ndim = len(axes)
    dummy = _dummy_tiles(axes, u)
    counts = [a.count + (dummy if i == u else 0) for i, a in enumerate(axes)]
    others = [i for i in range(ndim) if i != u]
    tile_axes = others + [u] if u is not None else list(range(ndim))
    inner_axes = [u] + others if u is not None else list(range(ndim))
    num_tiles = math.prod(axes[i].groups * counts[i] for i in range(ndim))
    tq = math.prod(a.size for a in axes)
    wk_grid = math.prod(a.window for a in axes)

    def tile_pos(i: int) -> list[int]:
        return [2 * tile_axes.index(i), 2 * tile_axes.index(i) + 1]

    queries = [(axes[i].query_real(counts[i]), tile_pos(i) + [2 * ndim + inner_axes.index(i)]) for i in range(ndim)]
    query_index, query_valid = _tokens(queries, grid, 0)
    query_index, query_valid = query_index.reshape(-1), query_valid.reshape(num_tiles, tq)
    spatial = num_tokens(grid)
    valid_flat = query_valid.reshape(-1)
    token_slot = np.full(spatial, -1, np.int64)
    token_slot[query_index[valid_flat]] = np.flatnonzero(valid_flat)
    if int(valid_flat.sum()) != spatial or (token_slot < 0).any():
        raise RuntimeError(f"tile plan does not cover the grid {grid} exactly once (internal error)")
    identity = query_index.size == spatial and bool((query_index == np.arange(spatial)).all())

    allowed = np.ones([1] * (4 * ndim), bool)
    for i in range(ndim):
        positions = tile_pos(i) + [2 * ndim + inner_axes.index(i), 3 * ndim + inner_axes.index(i)]
        allowed = allowed & _place(axes[i].allowed(counts[i]), positions, 4 * ndim)
    allowed = np.broadcast_to(allowed, allowed.shape).reshape(num_tiles, tq, wk_grid)
    if np.count_nonzero(allowed) != mask.pair_count(grid, 0):
        raise RuntimeError(f"tile plan of {mask!r} on {grid} misses key pairs (internal error)")
    if prefix:
        allowed = np.concatenate([allowed, np.ones((num_tiles, tq, prefix), bool)], axis=2)
    empty = query_valid & ~allowed.any(-1)
    allowed = allowed | ~(query_valid & ~empty)[..., None]

    if u is None:
        keys = [(axes[i].window_real(counts[i]), tile_pos(i) + [2 * ndim + i]) for i in range(ndim)]
        key_index = _tokens(keys, grid, prefix)[0].reshape(num_tiles, wk_grid)
        if prefix:
            key_index = np.concatenate([key_index, np.broadcast_to(np.arange(prefix), (num_tiles, prefix))], axis=1)
        key_index = key_index.reshape(-1)
    else:
        slots, slack = _key_buffer(axes, u, dummy)
        n_o = len(others)
        key_parts: list[tuple[np.ndarray, list[int]]] = []
        for i in range(ndim):
            if i == u:
                key_parts.append((axes[u].key_real(slots), [2 * n_o, 2 * n_o + 1]))
            else:
                j = others.index(i)
                key_parts.append((axes[i].window_real(counts[i]), [2 * j, 2 * j + 1, 2 * n_o + 2 + j]))
        key_index = _tokens(key_parts, grid, prefix)[0].reshape(-1)
        rest = math.prod(axes[i].window for i in others)
        key_index = np.concatenate([key_index, np.zeros(slack * rest, np.int64)])

    key_identity = key_index.size == prefix + spatial and bool((key_index == np.arange(prefix + spatial)).all())
    window, step = (axes[u].window, axes[u].size) if u is not None else (1, 1)
    rest = math.prod(axes[i].window for i in others) if u is not None else wk_grid + prefix
    return TilePlan(grid, prefix, tuple(axes), u, dummy, num_tiles, tq, wk_grid + prefix,
                    torch.from_numpy(query_index.copy()), torch.from_numpy(token_slot), identity,
                    torch.from_numpy(key_index.copy()), key_identity, window, step, rest, _mask_runs(allowed),
                    torch.from_numpy(empty.reshape(-1).copy()) if empty.any() else None)
