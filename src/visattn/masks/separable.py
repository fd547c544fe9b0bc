"""Separable masks: the AND over spatial axes of one ``AxisRule`` per axis.

Neighborhood, window, grid, halo, axial and strip attention are all separable, which makes their dense rows
an outer AND of small per-axis tables and their attended-pair count a product of per-axis counts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import Shape, num_tokens
from .axis import AxisRule
from .base import Mask, SpatialMod, unravel


class SeparableMask(Mask):
    """A mask that is the AND of ``axis_rules(shape)[a]`` along every axis ``a``."""

    def axis_rules(self, shape: Shape) -> tuple[AxisRule, ...]:
        raise NotImplementedError

    def check(self, shape: Shape) -> None:
        for axis, (rule, length) in enumerate(zip(self.axis_rules(shape), shape, strict=True)):
            rule.check(length, axis)

    def _spatial_mod(self, shape: Shape) -> SpatialMod:
        rules = self.axis_rules(shape)

        def spatial(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            out = None
            for rule, length, xq, xk in zip(rules, shape, unravel(q_idx, shape), unravel(kv_idx, shape), strict=True):
                allowed = rule.allowed(xq, xk, length)
                out = allowed if out is None else out & allowed
            return out

        return spatial

    def _spatial_rows(self, shape: Shape, start: int, stop: int, device: torch.device | None) -> Tensor:
        rules = self.axis_rules(shape)
        q = unravel(torch.arange(start, stop, device=device), shape)
        out = torch.ones(stop - start, 1, dtype=torch.bool, device=device)
        for rule, length, xq in zip(rules, shape, q, strict=True):
            axis_rows = rule.table(length, device)[xq]
            out = (out[:, :, None] & axis_rows[:, None, :]).reshape(stop - start, -1)
        return out

    def _spatial_pair_count(self, shape: Shape) -> int:
        rules = self.axis_rules(shape)
        return math.prod(int(rule.key_counts(length).sum()) for rule, length in zip(rules, shape, strict=True))

    def key_counts(self, shape: Shape) -> Tensor:
        """Keys seen by each spatial query, ``[prod(shape)]`` int64, from per-axis counts."""
        rules = self.axis_rules(shape)
        counts = torch.ones(1, dtype=torch.long)
        for rule, length in zip(rules, shape, strict=True):
            counts = (counts[:, None] * rule.key_counts(length)[None, :]).reshape(-1)
        return counts.reshape(num_tokens(shape))
