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

from ...masks import (
    AxisRule,
    BlockAxis,
    CausalAxis,
    EqualAxis,
    FullAxis,
    GridAxis,
    HaloAxis,
    NeighborhoodAxis,
    SlidingAxis,
)

SCAN_ROWS = 1 << 22
MAX_TILE = 1024
SMALL_TILES = 16
INTERVAL_RULES = (FullAxis, EqualAxis, CausalAxis, BlockAxis, GridAxis, HaloAxis, SlidingAxis, NeighborhoodAxis)


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
    """Groups, spans and candidate tile sizes of ``rule`` on an axis of ``length`` (O(L) for every rule of
    :mod:`visattn.masks.axis`; other rules are scanned row by row and evaluated per pair)."""
    interval = type(rule) in INTERVAL_RULES
    if type(rule) is NeighborhoodAxis and rule.dilation > 1:
        return _dilated_layout(rule, length)
    if type(rule) is GridAxis:
        step = length // rule.cells
        real = np.arange(rule.cells)[None, :] * step + np.arange(step)[:, None]
        lo = np.zeros_like(real)
        return AxisLayout(rule, length, real, lo, lo + rule.cells - 1, True, (rule.cells,))
    x = np.arange(length)
    lo, hi = _spans(rule, x, length)
    return AxisLayout(rule, length, x[None], lo[None], hi[None], interval, _tile_sizes(rule, length))


def _tile_sizes(rule: AxisRule, length: int) -> tuple[int, ...]:
    if type(rule) in (FullAxis, CausalAxis):
        return (length,)
    if type(rule) is EqualAxis:
        return (1,)
    if type(rule) is BlockAxis:
        return (rule.size,)
    if type(rule) is HaloAxis:
        return (rule.block,)
    small = set(range(1, min(length, SMALL_TILES) + 1))
    powers = {1 << i for i in range(int(math.log2(min(length, MAX_TILE))) + 1)}
    return tuple(sorted(small | powers | ({length} if length <= MAX_TILE else set())))


def _spans(rule: AxisRule, x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last key coordinate each coordinate ``x`` sees under a rule without groups (the equations of
    :mod:`visattn.masks.axis`; exact types only, so a subclass that changes ``allowed`` is scanned)."""
    if type(rule) is FullAxis:
        return np.zeros_like(x), np.full_like(x, length - 1)
    if type(rule) is EqualAxis:
        return x, x
    if type(rule) is CausalAxis:
        return np.zeros_like(x), x
    if type(rule) is BlockAxis:
        start = (x // rule.size) * rule.size
        return start, start + rule.size - 1
    if type(rule) is HaloAxis:
        start = (x // rule.block) * rule.block
        return np.clip(start - rule.halo, 0, None), np.clip(start + rule.block - 1 + rule.halo, None, length - 1)
    if type(rule) is SlidingAxis:
        w = rule.window
        if rule.is_causal:
            return np.clip(x - w + 1, 0, None), x
        return np.clip(x - w // 2, 0, None), np.clip(x + w // 2 - (1 - w % 2), None, length - 1)
    if type(rule) is NeighborhoodAxis and rule.dilation == 1:
        k, s = rule.kernel_size, rule.stride
        if rule.is_causal:
            leader = np.minimum((x // s) * s + s - 1, length - 1)
            return np.clip(leader - k + 1, 0, None), x
        left, right = k // 2, k // 2 - (1 - k % 2)
        leader = np.minimum((x // s) * s + s // 2, length - 1)
        center = np.maximum(np.minimum(leader, length - 1 - right), left)
        return center - left, center + right
    return _scanned_spans(rule, x, length)


def _scanned_spans(rule: AxisRule, x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Spans of an unknown rule from its table, a block of rows at a time (O(L^2) time, O(L) memory per row)."""
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


def _dilated_layout(rule: NeighborhoodAxis, length: int) -> AxisLayout:
    """Dilation groups ``g = x mod d`` of length ``L // d + (g < L mod d)``; inside a group the rule is the
    undilated neighborhood on the group (NATTEN semantics)."""
    d = rule.dilation
    group_len = -(-length // d)
    pos = np.arange(group_len)
    real = pos[None, :] * d + np.arange(d)[:, None]
    real = np.where(real < length, real, -1)
    inner = NeighborhoodAxis(rule.kernel_size, 1, rule.stride, rule.is_causal)
    lo, hi = np.ones_like(real), np.zeros_like(real)
    for g in range(d):
        size = length // d + int(g < length % d)
        lo[g, :size], hi[g, :size] = _spans(inner, pos[:size], size)
    return AxisLayout(rule, length, real, lo, hi, True, _tile_sizes(inner, group_len))
