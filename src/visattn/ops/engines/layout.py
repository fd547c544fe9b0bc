"""The per-axis key sets of a mask on a grid, from the mask's own rules: the one description every structured
engine plans from.

Along every axis ``a`` the keys a query coordinate ``x`` sees are ``start_a[x] + i * step_a[x]`` for
``i < count_a[x]`` (:meth:`visattn.masks.AxisRule.progression`); that covers neighborhood (dilation is the step),
window, grid, halo, axial, strip and sliding-window masks. A rule without a closed form is read from its table
(up to ``TABLE_MAX_LENGTH`` coordinates) and accepted where every row is a progression.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..._cache import byte_cached
from ..._checks import Shape
from ...masks import Mask, SeparableMask, SlidingWindowMask
from ...masks.axis import AxisRule, Progression

__all__ = ["LocalLayout", "axis_progression", "local_layout", "progression_table", "rule_progression",
           "transposed_progression"]

MAX_DIMS = 4
TABLE_MAX_LENGTH = 4096
TRANSPOSE_MAX_PAIRS = 1 << 25


def progression_table(progression: Progression, length: int) -> np.ndarray:
    """The bool ``[L, L]`` table (query coordinate, key coordinate) that a progression describes."""
    start, count, step = progression
    offset = np.arange(length)[None, :] - start[:, None]
    return (offset >= 0) & (offset % step[:, None] == 0) & (offset // step[:, None] < count[:, None])


def axis_progression(table: np.ndarray) -> Progression | None:
    """``(start, count, step)`` per row of a bool ``[L, L]`` table whose true columns form an arithmetic
    progression in every row; None if some row's do not."""
    length = table.shape[1]
    count = table.sum(1)
    first = np.where(count > 0, table.argmax(1), 0)
    last = np.where(count > 0, length - 1 - table[:, ::-1].argmax(1), 0)
    step = np.where(count > 1, (last - first) // np.maximum(count - 1, 1), 1)
    progression = (first.astype(np.int64), count.astype(np.int64), step.astype(np.int64))
    return progression if np.array_equal(progression_table(progression, length), table) else None


def transposed_progression(progression: Progression, length: int) -> Progression | None:
    """The progressions of the queries that see each key (None if they are not progressions, or the axis has
    more than ``TRANSPOSE_MAX_PAIRS`` pairs)."""
    start, count, step = progression
    if int(count.sum()) > TRANSPOSE_MAX_PAIRS:
        return None
    queries = np.repeat(np.arange(length), count)
    rank = np.arange(len(queries)) - np.repeat(np.cumsum(count) - count, count)
    keys = np.repeat(start, count) + rank * np.repeat(step, count)
    order = np.argsort(keys, kind="stable")
    keys, queries = keys[order], queries[order]
    t_count = np.bincount(keys, minlength=length)
    offsets = np.cumsum(t_count) - t_count
    t_first = np.where(t_count > 0, queries[np.minimum(offsets, len(queries) - 1)], 0)
    t_last = np.where(t_count > 0, queries[np.maximum(offsets + t_count - 1, 0)], 0)
    t_step = np.where(t_count > 1, (t_last - t_first) // np.maximum(t_count - 1, 1), 1)
    t_rank = np.arange(len(queries)) - np.repeat(offsets, t_count)
    if not np.array_equal(queries, t_first[keys] + t_rank * t_step[keys]):
        return None
    return t_first.astype(np.int64), t_count.astype(np.int64), t_step.astype(np.int64)


def _axis_rules(mask: Mask, shape: Shape) -> tuple[AxisRule, ...] | None:
    if isinstance(mask, SeparableMask):
        return tuple(mask.axis_rules(shape))
    if isinstance(mask, SlidingWindowMask):
        return (mask.rule(),)
    return None


def rule_progression(rule: AxisRule, length: int) -> Progression | None:
    """``rule``'s key sets on an axis of ``length``: its closed form, else its table read as progressions (up to
    ``TABLE_MAX_LENGTH``), else None; ValueError where they leave the axis."""
    progression = rule.progression(length)
    if progression is None and length <= TABLE_MAX_LENGTH:
        progression = axis_progression(rule.table(length).numpy())
    if progression is not None:
        start, count, step = progression
        last = start + (np.maximum(count, 1) - 1) * step
        if len(start) != length or (start < 0).any() or (last >= length).any():
            raise ValueError(f"{rule!r} names keys outside an axis of length {length} (the mask does not fit the "
                             f"grid; Mask.bind checks this)")
    return progression


def _pack(parts: list[Progression]) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.from_numpy(np.ascontiguousarray(np.concatenate([p[i] for p in parts]))) for i in range(3))


@dataclass(frozen=True, eq=False)
class LocalLayout:
    """The per-axis progressions of a mask on a grid (``shape``; one axis of ``prod(shape)`` tokens for a
    sliding window), kept as numpy arrays and packed into int64 tensors concatenated over axes for the kernel."""

    shape: Shape
    axes: tuple[Progression, ...]

    @functools.cached_property
    def forward(self) -> tuple[Tensor, Tensor, Tensor]:
        return _pack(list(self.axes))

    @functools.cached_property
    def transposed(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """The queries that see each key, per axis; None where they are not progressions (no backward)."""
        parts = [transposed_progression(p, length) for p, length in zip(self.axes, self.shape, strict=True)]
        return None if any(p is None for p in parts) else _pack(parts)

    @property
    def max_keys(self) -> int:
        """Most keys any spatial query sees (prefix tokens not counted)."""
        return math.prod(int(p[1].max()) for p in self.axes)

    @property
    def pairs(self) -> int:
        """Attended (query, key) pairs among the spatial tokens, per batch and head."""
        return math.prod(int(p[1].sum()) for p in self.axes)


@byte_cached
def local_layout(mask: Mask, shape: Shape) -> LocalLayout | None:
    """The kernel layout of ``mask`` on ``shape``; None if the mask is not a progression along every axis."""
    if isinstance(mask, SlidingWindowMask):
        shape = (math.prod(shape),)
    rules = _axis_rules(mask, shape)
    if rules is None or len(shape) > MAX_DIMS:
        return None
    axes = [rule_progression(rule, length) for rule, length in zip(rules, shape, strict=True)]
    return None if any(p is None for p in axes) else LocalLayout(shape, tuple(axes))
