"""Masks over the token sequence (row-major order), whatever the grid: full, causal and sliding window."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import Shape, num_tokens
from .axis import AxisRule, CausalAxis, FullAxis, SlidingAxis
from .base import Mask, SpatialMod


class SequenceMask(Mask):
    """A mask given by one ``AxisRule`` applied to the linear token index."""

    def rule(self) -> AxisRule:
        raise NotImplementedError

    def _spatial_mod(self, shape: Shape) -> SpatialMod:
        rule, length = self.rule(), num_tokens(shape)
        return lambda q_idx, kv_idx: rule.allowed(q_idx, kv_idx, length)

    def _spatial_rows(self, shape: Shape, start: int, stop: int, device: torch.device | None) -> Tensor:
        length = num_tokens(shape)
        q = torch.arange(start, stop, device=device)
        return self.rule().allowed(q[:, None], torch.arange(length, device=device)[None, :], length)

    def _spatial_pair_count(self, shape: Shape) -> int:
        return int(self.rule().key_counts(num_tokens(shape)).sum())


@dataclass(frozen=True)
class FullMask(SequenceMask):
    """Every query sees every key (plain softmax attention)."""

    def rule(self) -> AxisRule:
        return FullAxis()


@dataclass(frozen=True)
class CausalMask(SequenceMask):
    """Each token sees itself and the tokens before it in row-major order."""

    def rule(self) -> AxisRule:
        return CausalAxis()


@dataclass(frozen=True)
class SlidingWindowMask(SequenceMask):
    """Each token sees a ``window_size`` window of the sequence: centred (``-(w//2) .. w//2 - (1 - w%2)``), or
    ending at the query when ``is_causal``. Unlike 1-D neighborhood attention the window is not shifted at the
    ends, so edge tokens see fewer keys.

    Paper: Beltagy et al., "Longformer: The Long-Document Transformer" (arXiv 2004.05150).
    """

    window_size: int
    is_causal: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.window_size, bool) or not isinstance(self.window_size, int) or self.window_size < 1:
            raise ValueError(f"window_size must be an int >= 1, got {self.window_size!r}")
        if not isinstance(self.is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {self.is_causal!r}")

    def rule(self) -> AxisRule:
        return SlidingAxis(self.window_size, self.is_causal)


def full_mask() -> FullMask:
    """Every query sees every key."""
    return FullMask()


def causal_mask() -> CausalMask:
    """Each token sees itself and every earlier token (row-major order)."""
    return CausalMask()


def sliding_window_mask(window_size: int, is_causal: bool = False) -> SlidingWindowMask:
    """1-D sliding window of ``window_size`` tokens over the sequence, centred or causal."""
    return SlidingWindowMask(window_size, is_causal)
