"""One-axis rules: which key coordinate a query coordinate may see along a single axis of length L.

Separable masks (neighborhood, window, grid, halo, axial, strips) are the AND of one rule per axis.
Every rule is vectorised: ``allowed(xq, xk, length)`` takes broadcastable int64 tensors and uses only
elementwise tensor arithmetic, so it runs under ``torch.vmap`` inside FlexAttention. Every rule here also gives
its key sets in closed form, ``progression(length)``: the keys of query coordinate ``x`` are
``start[x] + i * step[x]`` for ``i < count[x]`` (the fused local kernel's input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

Progression = tuple[np.ndarray, np.ndarray, np.ndarray]


def _progression(start: np.ndarray, count: np.ndarray, step: np.ndarray | int = 1) -> Progression:
    start, count = np.asarray(start, dtype=np.int64), np.asarray(count, dtype=np.int64)
    return start, count, np.broadcast_to(np.asarray(step, dtype=np.int64), start.shape).copy()


class AxisRule:
    """A rule along one axis. Subclasses define ``allowed`` and may speed up ``key_counts``."""

    def check(self, length: int, axis: int) -> None:
        """Raise ``ValueError`` if the rule cannot apply to an axis of ``length`` tokens."""

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        raise NotImplementedError

    def table(self, length: int, device: torch.device | str | None = None) -> Tensor:
        """The rule as a bool ``[length, length]`` table (query coordinate, key coordinate)."""
        x = torch.arange(length, device=device)
        return self.allowed(x[:, None], x[None, :], length)

    def key_counts(self, length: int) -> Tensor:
        """Number of keys each query coordinate sees, shape ``[length]`` (int64)."""
        return self.table(length).sum(-1)

    def progression(self, length: int) -> Progression | None:
        """``(start, count, step)`` int64 arrays ``[length]`` with query coordinate ``x`` seeing keys
        ``start[x] + i * step[x]``, ``i < count[x]``; None for a rule whose key sets are not progressions."""
        return None


@dataclass(frozen=True)
class FullAxis(AxisRule):
    """Every coordinate sees every coordinate."""

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        return (xq >= 0) & (xk >= 0)

    def key_counts(self, length: int) -> Tensor:
        return torch.full((length,), length, dtype=torch.long)


    def progression(self, length: int) -> Progression:
        return _progression(np.zeros(length), np.full(length, length))

@dataclass(frozen=True)
class EqualAxis(AxisRule):
    """A coordinate sees only itself (used for the axes an axial attention does not run along)."""

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        return xq == xk

    def key_counts(self, length: int) -> Tensor:
        return torch.ones(length, dtype=torch.long)


    def progression(self, length: int) -> Progression:
        return _progression(np.arange(length), np.ones(length))

@dataclass(frozen=True)
class NeighborhoodAxis(AxisRule):
    """Neighborhood attention along one axis with NATTEN's semantics (Faster Neighborhood Attention).

    Fields in NATTEN's order: ``kernel_size, stride, dilation, is_causal``.

    With dilation d, coordinates split into d groups ``g = x mod d`` of length
    ``L_g = L // d + (g < L mod d)``; inside a group the position is ``x' = x // d``.
    Non-causal: ``left = k // 2``, ``right = k // 2 - (1 - k mod 2)``,
    ``leader = min((x' // s) s + s // 2, L_g - 1)``, ``center = clamp(leader, left, L_g - 1 - right)`` and the
    keys are ``x'_k in [center - left, center + right]``: exactly k keys, the window shifted inward at borders.
    Causal: ``x'_k <= x'`` and ``leader_c - x'_k < k`` with ``leader_c = min((x' // s) s + s - 1, L_g - 1)``.
    """

    kernel_size: int
    stride: int = 1
    dilation: int = 1
    is_causal: bool = False

    def check(self, length: int, axis: int) -> None:
        k, d, s = self.kernel_size, self.dilation, self.stride
        if k * d > length:
            raise ValueError(
                f"kernel_size * dilation must be <= the axis length on axis {axis}: "
                f"kernel_size={k}, dilation={d}, length={length}"
            )
        if s > k:
            raise ValueError(f"stride must be <= kernel_size on axis {axis}, got stride={s}, kernel_size={k}")

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        k, d, s = self.kernel_size, self.dilation, self.stride
        group = xq % d
        same_group = group == (xk % d)
        pq, pk = xq // d, xk // d
        group_len = length // d + (group < length % d).long()
        if self.is_causal:
            leader = torch.minimum((pq // s) * s + (s - 1), group_len - 1)
            inside = (pk <= pq) & (leader - pk < k)
        else:
            left, right = k // 2, k // 2 - (1 - k % 2)
            leader = torch.minimum((pq // s) * s + s // 2, group_len - 1)
            center = torch.maximum(torch.minimum(leader, group_len - 1 - right), torch.full_like(leader, left))
            inside = (pk >= center - left) & (pk <= center + right)
        return same_group & inside

    def key_counts(self, length: int) -> Tensor:
        if not self.is_causal:
            return torch.full((length,), self.kernel_size, dtype=torch.long)
        k, d, s = self.kernel_size, self.dilation, self.stride
        x = torch.arange(length)
        pq = x // d
        group_len = length // d + ((x % d) < length % d).long()
        leader = torch.minimum((pq // s) * s + (s - 1), group_len - 1)
        return pq - torch.clamp(leader - k + 1, min=0) + 1


    def progression(self, length: int) -> Progression:
        k, d, s = self.kernel_size, self.dilation, self.stride
        x = np.arange(length)
        group, pq = x % d, x // d
        group_len = length // d + (group < length % d)
        if self.is_causal:
            leader = np.minimum((pq // s) * s + (s - 1), group_len - 1)
            first = np.maximum(leader - k + 1, 0)
            return _progression(first * d + group, pq - first + 1, d)
        left, right = k // 2, k // 2 - (1 - k % 2)
        leader = np.minimum((pq // s) * s + s // 2, group_len - 1)
        center = np.maximum(np.minimum(leader, group_len - 1 - right), left)
        return _progression((center - left) * d + group, np.full(length, k), d)

@dataclass(frozen=True)
class BlockAxis(AxisRule):
    """Window (block) partition: coordinates in the same block of ``size`` see each other (MaxViT block)."""

    size: int
    name: str = "window_size"

    def check(self, length: int, axis: int) -> None:
        if self.size > length or length % self.size:
            raise ValueError(
                f"{self.name} must divide the axis length on axis {axis} (pad the input first): "
                f"{self.name}={self.size}, length={length}"
            )

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        return (xq // self.size) == (xk // self.size)

    def key_counts(self, length: int) -> Tensor:
        return torch.full((length,), self.size, dtype=torch.long)


    def progression(self, length: int) -> Progression:
        x = np.arange(length)
        return _progression((x // self.size) * self.size, np.full(length, self.size))

@dataclass(frozen=True)
class GridAxis(AxisRule):
    """Grid (dilated) partition: a ``cells``-long grid of tokens spaced ``L / cells`` apart (MaxViT grid)."""

    cells: int

    def check(self, length: int, axis: int) -> None:
        if self.cells > length or length % self.cells:
            raise ValueError(
                f"grid_size must divide the axis length on axis {axis} (pad the input first): "
                f"grid_size={self.cells}, length={length}"
            )

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        step = length // self.cells
        return (xq % step) == (xk % step)

    def key_counts(self, length: int) -> Tensor:
        return torch.full((length,), self.cells, dtype=torch.long)


    def progression(self, length: int) -> Progression:
        step = length // self.cells
        return _progression(np.arange(length) % step, np.full(length, self.cells), step)

@dataclass(frozen=True)
class HaloAxis(AxisRule):
    """HaloNet: queries in blocks of ``block`` see the block widened by ``halo`` on each side (in bounds)."""

    block: int
    halo: int

    def check(self, length: int, axis: int) -> None:
        if self.block > length or length % self.block:
            raise ValueError(
                f"block_size must divide the axis length on axis {axis}: block_size={self.block}, length={length}"
            )
        if self.halo > self.block:
            raise ValueError(f"halo_size must be <= block_size, got halo_size={self.halo}, block_size={self.block}")

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        start = (xq // self.block) * self.block
        return (xk >= start - self.halo) & (xk < start + self.block + self.halo)

    def key_counts(self, length: int) -> Tensor:
        start = (torch.arange(length) // self.block) * self.block
        lo = torch.clamp(start - self.halo, min=0)
        hi = torch.clamp(start + self.block + self.halo, max=length)
        return hi - lo


    def progression(self, length: int) -> Progression:
        start = (np.arange(length) // self.block) * self.block
        lo = np.maximum(start - self.halo, 0)
        return _progression(lo, np.minimum(start + self.block + self.halo, length) - lo)

@dataclass(frozen=True)
class SlidingAxis(AxisRule):
    """Sliding window over a sequence: no inward shift at the ends (Longformer-style local attention).

    Non-causal: ``-(w // 2) <= xk - xq <= w // 2 - (1 - w mod 2)``. Causal: ``0 <= xq - xk < w``.
    """

    window: int
    is_causal: bool = False

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        w = self.window
        if self.is_causal:
            return (xk <= xq) & (xq - xk < w)
        offset = xk - xq
        return (offset >= -(w // 2)) & (offset <= w // 2 - (1 - w % 2))

    def key_counts(self, length: int) -> Tensor:
        x = torch.arange(length)
        w = self.window
        if self.is_causal:
            return x - torch.clamp(x - w + 1, min=0) + 1
        lo = torch.clamp(x - w // 2, min=0)
        hi = torch.clamp(x + w // 2 - (1 - w % 2), max=length - 1)
        return hi - lo + 1


    def progression(self, length: int) -> Progression:
        x, w = np.arange(length), self.window
        if self.is_causal:
            lo = np.maximum(x - w + 1, 0)
            return _progression(lo, x - lo + 1)
        lo = np.maximum(x - w // 2, 0)
        return _progression(lo, np.minimum(x + w // 2 - (1 - w % 2), length - 1) - lo + 1)

@dataclass(frozen=True)
class CausalAxis(AxisRule):
    """A coordinate sees itself and every earlier coordinate."""

    def allowed(self, xq: Tensor, xk: Tensor, length: int) -> Tensor:
        return xk <= xq

    def key_counts(self, length: int) -> Tensor:
        return torch.arange(1, length + 1)

    def progression(self, length: int) -> Progression:
        return _progression(np.zeros(length), np.arange(1, length + 1))
