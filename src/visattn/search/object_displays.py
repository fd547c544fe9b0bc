"""Generated object displays with scanpaths from a greedy target-similarity searcher, and a saliency-order baseline.

Training and evaluation data for OAT ("OAT: Object-Level Attention Transformer for Gaze Scanpath Prediction",
arXiv 2407.13335) when no eye-tracking data is at hand. A display puts ``num_objects`` coloured squares in distinct
cells of a ``rows x cols`` grid; one of them has the target's colour. The searcher (ours, a stand-in for people or
eccNET) starts at the display centre and fixates, among objects not yet fixated, the one maximising
``-|c_o - c_target| - distance_weight * |p_o - p_now| / diag`` until it fixates the target. The saliency-order
baseline fixates objects by decreasing bottom-up saliency (brightness ``sum(c_o)``) until the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ObjectDisplay", "generate_displays", "greedy_search_scanpath", "saliency_order_scanpath"]


@dataclass(frozen=True)
class ObjectDisplay:
    """A batch of displays: ``crops`` ``(B, O, 3, s, s)``, ``target`` ``(B, 3, s, s)``, ``cells`` ``(B, O, 2)``
    (grid row, column), ``colours`` ``(B, O, 3)`` and ``target_index`` ``(B,)``."""

    crops: Tensor
    target: Tensor
    cells: Tensor
    colours: Tensor
    target_index: Tensor


def generate_displays(batch: int, num_objects: int = 6, grid: tuple[int, int] = (4, 4), crop: int = 16,
                      noise: float = 0.05, seed: int = 0) -> ObjectDisplay:
    """``batch`` random displays (see the module docstring); colours uniform in ``[0, 1]^3``, crops with noise."""
    rows, cols = grid
    if num_objects < 1 or num_objects > rows * cols:
        raise ValueError(f"num_objects must be in [1, {rows * cols}] for grid {grid}, got {num_objects!r}")
    gen = torch.Generator().manual_seed(seed)
    cells = torch.stack([torch.randperm(rows * cols, generator=gen)[:num_objects] for _ in range(batch)])
    cells = torch.stack((cells // cols, cells % cols), dim=-1)
    colours = torch.rand(batch, num_objects, 3, generator=gen)
    target_index = torch.randint(0, num_objects, (batch,), generator=gen)
    crops = colours[..., None, None].expand(batch, num_objects, 3, crop, crop)
    crops = (crops + noise * torch.randn(crops.shape, generator=gen)).clamp(0, 1)
    tcol = colours[torch.arange(batch), target_index]
    target = (tcol[..., None, None].expand(batch, 3, crop, crop)
              + noise * torch.randn(batch, 3, crop, crop, generator=gen)).clamp(0, 1)
    return ObjectDisplay(crops, target, cells, colours, target_index)


def greedy_search_scanpath(display: ObjectDisplay, grid: tuple[int, int], distance_weight: float = 0.5
                           ) -> list[list[int]]:
    """Object-index scanpaths of the greedy target-similarity searcher, each ending on the target."""
    rows, cols = grid
    diag = math.hypot(rows - 1, cols - 1) or 1.0
    out = []
    for b in range(display.colours.shape[0]):
        colours, cells = display.colours[b], display.cells[b].float()
        tcol = colours[display.target_index[b]]
        sim = -torch.linalg.vector_norm(colours - tcol, dim=1)
        now = torch.tensor([(rows - 1) / 2, (cols - 1) / 2])
        visited: list[int] = []
        while True:
            score = sim - distance_weight * torch.linalg.vector_norm(cells - now, dim=1) / diag
            if visited:
                score[visited] = float("-inf")
            i = int(score.argmax())
            visited.append(i)
            now = cells[i]
            if i == int(display.target_index[b]):
                break
        out.append(visited)
    return out


def saliency_order_scanpath(display: ObjectDisplay) -> list[list[int]]:
    """Objects by decreasing brightness ``sum(colour)`` up to and including the target."""
    out = []
    for b in range(display.colours.shape[0]):
        order = torch.argsort(display.colours[b].sum(1), descending=True).tolist()
        t = int(display.target_index[b])
        out.append(order[:order.index(t) + 1])
    return out
