"""Radial Attention's spatio-temporal energy-decay mask.

Paper: Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy Decay for Long Video
Generation" (arXiv 2506.19852). Tokens are ``f`` frames of ``s`` tokens (``shape = (f, *spatial)``, ``s =
prod(spatial)``, spatial index ``k`` in row-major order). For frames ``i, j`` and spatial indices ``k, l``, with
``b = 2^floor(log2(max(|i - j|, 1)))``, the paper keeps the pair iff

    (b <= s and |k - l| + 1 <= s / b)  or  (|i - j| mod ceil(b / s) == 0 and k == l),

so the spatial band halves each time the frame distance doubles. ``rule="paper"`` (default) is that equation.
``rule="code"`` follows the released implementation, which differs (block-wise, see :class:`RadialMask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import Shape, num_tokens
from .base import Mask, SpatialMod

RULES = ("paper", "code")


def _floor_pow2(x: Tensor) -> Tensor:
    """Largest power of two <= x for integer x >= 1, exact for any int64 input."""
    b = torch.exp2(torch.floor(torch.log2(x.double()))).long()
    b = torch.where(b * 2 <= x, b * 2, b)
    return torch.where(b > x, b // 2, b)


@dataclass(frozen=True)
class RadialMask(Mask):
    """Radial attention over ``shape = (frames, *spatial)``; see the module docstring for ``rule="paper"``."""

    rule: str = "paper"
    block_size: int = 128
    decay_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")

    def check(self, shape: Shape) -> None:
        if len(shape) < 2:
            raise ValueError(f"radial masks need shape=(frames, *spatial) with at least 2 dims, got shape={shape}")

    def _frame_split(self, shape: Shape) -> tuple[int, int]:
        return shape[0], num_tokens(shape[1:])

    def _spatial_mod(self, shape: Shape) -> SpatialMod:
        if self.rule == "code":
            raise NotImplementedError("RadialMask(rule='code') is not implemented yet")
        _, s = self._frame_split(shape)

        def spatial(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            i, k = q_idx // s, q_idx % s
            j, l = kv_idx // s, kv_idx % s
            dt = (i - j).abs()
            b = _floor_pow2(torch.clamp(dt, min=1))
            band = (b <= s) & (((k - l).abs() + 1) * b <= s)
            period = (b + s - 1) // s
            diagonal = (dt % period == 0) & (k == l)
            return band | diagonal

        return spatial

    def _spatial_pair_count(self, shape: Shape) -> int:
        f, s = self._frame_split(shape)
        spatial = self._spatial_mod(shape)
        q, k = torch.arange(s)[:, None], torch.arange(s)[None, :]
        total = int(spatial(q, k).sum()) * f
        for dt in range(1, f):
            total += int(spatial(q, k + dt * s).sum()) * 2 * (f - dt)
        return total


def radial_mask(rule: str = "paper", block_size: int = 128, decay_factor: float = 1.0) -> RadialMask:
    """Radial Attention mask over ``shape = (frames, *spatial)``.

    Args:
        rule: ``"paper"`` for the paper's equation, ``"code"`` for the released implementation's block rule.
        block_size: token block size of ``rule="code"`` (the release uses 128).
        decay_factor: window scale of ``rule="code"``.
    """
    return RadialMask(rule, block_size, decay_factor)
