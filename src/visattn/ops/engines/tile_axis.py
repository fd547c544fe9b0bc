"""One axis of the tiled engine: an ``AxisRule`` cut into query tiles, each reading one window of key slots.

An axis of length L is first reordered into G independent groups of ``Lg`` slots (``real[g, p]`` is the axis
coordinate in slot p of group g, -1 for padding). Dilated neighborhoods (groups ``x mod d``, Faster Neighborhood
Attention, arXiv 2403.04690) and MaxViT's grid partition (groups ``x mod (L / G)``, arXiv 2204.01697) become
contiguous this way; attention is permutation-equivariant, so the engine permutes q, k, v and un-permutes the output.
Inside a group, query slot p sees the keys ``[lo[p], hi[p]]`` (group positions; an interval for every rule of
:mod:`visattn.masks.axis`). Tiles of T query slots read a window of W key slots that covers all their spans.

Index arithmetic runs in NumPy: it is single-threaded, so planning does not stall on OpenMP barriers when the
CPU is shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...masks import AxisRule
from ...masks.axis import Progression
from .layout import rule_progression

SCAN_ROWS = 1 << 22
MAX_TILE = 1024
SMALL_TILES = 16


@dataclass(frozen=True, eq=False)
class AxisLayout:
    """An axis reordered into groups, with each query slot's key span (group positions, inclusive).

    ``real``: ``[G, Lg]`` axis coordinate per slot, -1 = padding; ``lo``/``hi``: ``[G, Lg]``, ``lo > hi`` for a slot
    that sees no key; ``interval``: every slot sees exactly its span (else the rule is evaluated per pair);
    ``tile_sizes``: the tile sizes worth trying along this axis.
    """

    rule: AxisRule
    length: int
    real: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    interval: bool
    tile_sizes: tuple[int, ...]

    @property
    def groups(self) -> int:
        return self.real.shape[0]

    @property
    def group_length(self) -> int:
        return self.real.shape[1]

    def tiles(self, size: int, affine: bool) -> AxisTiles:
        """Cut every group into tiles of ``size`` query slots and find each tile's key window.

        ``affine``: tile i starts at ``i * size + c`` in every group (one ``c``), so consecutive windows are a
        strided view of one buffer; otherwise each tile's window starts at its own first key (moved back to stay
        inside the group where it can), which is narrower where windows shift at the borders.
        """
        count = -(-self.group_length // size)
        pad = count * size - self.group_length
        seen = (self.real >= 0) & (self.lo <= self.hi)
        big = self.group_length + size
        lo = np.pad(np.where(seen, self.lo, big), ((0, 0), (0, pad)), constant_values=big)
        hi = np.pad(np.where(seen, self.hi, -big), ((0, 0), (0, pad)), constant_values=-big)
        lo = lo.reshape(self.groups, count, size).min(-1)
        hi = hi.reshape(self.groups, count, size).max(-1)
        used = lo <= hi
        if not used.any():
            return AxisTiles(self, size, count, np.zeros((self.groups, count), np.int64), 1, 0 if affine else None)
        first = np.arange(count) * size
        if affine:
            offset = int((lo - first)[used].min())
            window = int((hi - first)[used].max()) - offset + 1
            starts = np.broadcast_to(first + offset, (self.groups, count))
            return AxisTiles(self, size, count, starts, window, offset)
        window = int((hi - lo + 1)[used].max())
        starts = np.clip(np.minimum(lo, self.group_length - window), 0, None)
        return AxisTiles(self, size, count, np.where(used, starts, 0), window, None)


@dataclass(frozen=True, eq=False)
class AxisTiles:
    """``layout`` cut into ``count`` tiles of ``size`` query slots per group; tile i of group g reads the key slots
    ``[starts[g, i], starts[g, i] + window)``. ``offset`` is set for affine windows (``starts = i * size + offset``).
    """

    layout: AxisLayout
    size: int
    count: int
    starts: np.ndarray
    window: int
    offset: int | None

    @property
    def groups(self) -> int:
        return self.layout.groups

    def _slot_real(self, positions: np.ndarray) -> np.ndarray:
        """Axis coordinate of group positions ``positions`` (``[G, ...]``, any values), -1 where out of range."""
        real, lg = self.layout.real, self.layout.group_length
        inside = (positions >= 0) & (positions < lg)
        flat = np.clip(positions, 0, lg - 1).reshape(real.shape[0], -1)
        out = np.take_along_axis(real, flat, axis=1).reshape(positions.shape)
        return np.where(inside, out, -1)

    def _query_positions(self, tiles: int) -> np.ndarray:
        pos = np.arange(tiles * self.size).reshape(tiles, self.size)
        return np.broadcast_to(pos, (self.groups, tiles, self.size))

    def _starts(self, tiles: int) -> np.ndarray:
        if tiles <= self.count:
            return self.starts[:, :tiles]
        dummy = np.full((self.groups, tiles - self.count), -self.window - 1)
        return np.concatenate([self.starts, dummy], axis=1)

    def query_real(self, tiles: int) -> np.ndarray:
        """``[G, tiles, size]`` axis coordinate of each query slot (-1: padding, or a tile past ``count``)."""
        return self._slot_real(self._query_positions(tiles))

    def key_real(self, slots: int) -> np.ndarray:
        """``[G, slots]`` axis coordinate of the key buffer that starts at group position ``offset`` (affine only)."""
        if self.offset is None:
            raise ValueError("key_real needs affine tiles (offset is None)")
        pos = np.arange(self.offset, self.offset + slots)
        return self._slot_real(np.broadcast_to(pos, (self.groups, slots)))

    def window_real(self, tiles: int) -> np.ndarray:
        """``[G, tiles, window]`` axis coordinate of each tile's key slots; tiles past ``count`` (dummies) read
        padding."""
        return self._slot_real(self._starts(tiles)[..., None] + np.arange(self.window))

    def allowed(self, tiles: int) -> np.ndarray:
        """``[G, tiles, size, window]`` bool: the rule between each tile's query slots and its key slots."""
        q_pos = self._query_positions(tiles)
        q_valid = self._slot_real(q_pos) >= 0
        starts = self._starts(tiles)
        if self.layout.interval:
            lg = self.layout.group_length
            clipped = np.clip(q_pos, 0, lg - 1).reshape(self.groups, -1)
            lo = np.take_along_axis(self.layout.lo, clipped, axis=1).reshape(q_pos.shape) - starts[..., None]
            hi = np.take_along_axis(self.layout.hi, clipped, axis=1).reshape(q_pos.shape) - starts[..., None]
            lo = np.where(q_valid, lo, self.window).astype(np.int32)[..., None]
            w = np.arange(self.window, dtype=np.int32)
            return (w >= lo) & (w <= hi.astype(np.int32)[..., None])
        k_real = self._slot_real(starts[..., None] + np.arange(self.window))
        rule, length = self.layout.rule, self.layout.length
        q = torch.from_numpy(np.clip(self._slot_real(q_pos), 0, None))[..., :, None]
        k = torch.from_numpy(np.clip(k_real, 0, None))[..., None, :]
        return rule.allowed(q, k, length).numpy() & q_valid[..., None] & (k_real >= 0)[..., None, :]


def axis_layout(rule: AxisRule, length: int) -> AxisLayout:
    """Groups, spans and candidate tile sizes of ``rule`` on an axis of ``length``, from the rule's own key sets
    (:meth:`~visattn.masks.AxisRule.progression`, or its table read as progressions): O(L) for every rule with
    progressions. Where every coordinate with more than one key steps by the same ``s`` from its own residue
    ``x mod s`` (dilated neighborhoods, MaxViT grids; ``s = 1`` for the others), the groups are the residues and a
    coordinate's keys are the interval ``[start // s, start // s + count - 1]`` of its group. Other rules are scanned
    row by row and evaluated per pair."""
    progression = rule_progression(rule, length)
    grouped = progression is not None and _step(progression, length)
    if grouped is None or progression is None:
        x = np.arange(length)
        lo, hi = _scanned_spans(rule, x, length)
        return AxisLayout(rule, length, x[None], lo[None], hi[None], False, _generic_sizes(length))
    start, count, _ = progression
    step = grouped
    group_length = -(-length // step)
    real = np.arange(group_length)[None, :] * step + np.arange(step)[:, None]
    real = np.where(real < length, real, -1)
    x = np.clip(real, 0, None)
    seen = (real >= 0) & (count[x] > 0)
    lo = np.where(seen, start[x] // step, 1)
    hi = np.where(seen, lo + count[x] - 1, 0)
    return AxisLayout(rule, length, real, lo, hi, True, _tile_sizes(lo, hi, count, group_length))


def _step(progression: Progression, length: int) -> int | None:
    """The one step of every coordinate with more than one key, where each starts at its own residue; else None."""
    start, count, step = progression
    several = count > 1
    if not several.any():
        return 1
    s = int(step[several][0])
    if (step[several] != s).any() or ((start[several] - np.arange(length)[several]) % s).any():
        return None
    return s


def _tile_sizes(lo: np.ndarray, hi: np.ndarray, count: np.ndarray, group_length: int) -> tuple[int, ...]:
    """Tile sizes worth trying: the length of the runs of coordinates with one key set where all runs have one
    length (blocks, halo blocks, grid groups, a full axis; single keys), else a range of sizes for the cost model."""
    spans = np.stack([lo, hi], -1)
    change = np.any(spans[:, 1:] != spans[:, :-1], axis=-1)
    bounds = [np.flatnonzero(np.concatenate([[True], row, [True]])) for row in change]
    runs = np.unique(np.concatenate([np.diff(b) for b in bounds]))
    if len(runs) == 1 and (runs[0] > 1 or count.max(initial=0) <= 1):
        return (int(runs[0]),)
    return _generic_sizes(group_length)


def _generic_sizes(length: int) -> tuple[int, ...]:
    small = set(range(1, min(length, SMALL_TILES) + 1))
    powers = {1 << i for i in range(int(math.log2(min(length, MAX_TILE))) + 1)}
    return tuple(sorted(small | powers | ({length} if length <= MAX_TILE else set())))


def _scanned_spans(rule: AxisRule, x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Spans of a rule without progressions from its table, a block of rows at a time (O(L^2) time, O(L) memory per
    row); the rule is then evaluated per pair."""
    lo, hi = np.ones_like(x), np.zeros_like(x)
    keys = torch.arange(length)
    step = max(1, SCAN_ROWS // length)
    for start in range(0, length, step):
        rows = rule.allowed(torch.from_numpy(x[start : start + step, None]), keys[None, :], length).numpy()
        seen = rows.any(-1)
        first = rows.argmax(-1)
        last = length - 1 - rows[:, ::-1].argmax(-1)
        lo[start : start + step] = np.where(seen, first, 1)
        hi[start : start + step] = np.where(seen, last, 0)
    return lo, hi
