"""AND / OR of masks: ``a & b`` lets a query see a key only where both do, ``a | b`` where either does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import Shape
from .base import Mask, SpatialMod


@dataclass(frozen=True)
class _CombinedMask(Mask):
    masks: tuple[Mask, ...]

    def __post_init__(self) -> None:
        masks = tuple(self.masks)
        if not masks:
            raise ValueError("masks must hold at least one Mask, got none")
        for m in masks:
            if not isinstance(m, Mask):
                raise TypeError(f"masks must hold Mask objects, got {type(m).__name__}")
        object.__setattr__(self, "masks", masks)

    @property
    def max_dims(self) -> int | None:
        limits = [m.max_dims for m in self.masks if m.max_dims is not None]
        return min(limits) if limits else None

    def check(self, shape: Shape) -> None:
        for m in self.masks:
            m.check(shape)

    @staticmethod
    def _join(a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def _spatial_mod(self, shape: Shape) -> SpatialMod:
        mods = [m._spatial_mod(shape) for m in self.masks]

        def spatial(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            out = mods[0](q_idx, kv_idx)
            for mod in mods[1:]:
                out = self._join(out, mod(q_idx, kv_idx))
            return out

        return spatial

    def _spatial_rows(self, shape: Shape, start: int, stop: int, device: torch.device | None) -> Tensor:
        out = self.masks[0]._spatial_rows(shape, start, stop, device)
        for m in self.masks[1:]:
            out = self._join(out, m._spatial_rows(shape, start, stop, device))
        return out


class AndMask(_CombinedMask):
    """A query sees a key only where every mask allows it."""

    @staticmethod
    def _join(a: Tensor, b: Tensor) -> Tensor:
        return a & b


class OrMask(_CombinedMask):
    """A query sees a key where any mask allows it."""

    @staticmethod
    def _join(a: Tensor, b: Tensor) -> Tensor:
        return a | b


def and_masks(*masks: Mask | Sequence[Mask]) -> AndMask:
    """The intersection of ``masks``."""
    return AndMask(tuple(masks))


def or_masks(*masks: Mask) -> OrMask:
    """The union of ``masks``."""
    return OrMask(tuple(masks))
