"""Generated object displays, scanpaths over them from eccNET or a greedy searcher, and a saliency-order baseline.

Training and evaluation data for OAT ("OAT: Object-Level Attention Transformer for Gaze Scanpath Prediction",
arXiv 2407.13335) when no eye-tracking data is at hand. A display puts ``num_objects`` coloured squares in distinct
cells of a ``rows x cols`` grid; one of them has the target's colour.

- ``eccnet_scanpath``: the display is rendered as one image (each crop centred in its ``cell_px`` cell on a grey
  background) and searched by eccNET's own fixation loop (``EccNet.search``: eccentricity pooling around each
  fixation, top-down modulation by the target, DoG smoothing, inhibition of return of the fixated object's cell;
  Gupta et al., *Visual Search Asymmetry*, arXiv:2106.02953). Only the objects' cells can be fixated, so each
  fixation maps to the object whose cell holds it; the search stops on the target's cell.
- ``greedy_search_scanpath`` (ours, a fast stand-in): from the display centre, fixate among objects not yet
  fixated the one maximising ``-|c_o - c_target| - distance_weight * |p_o - p_now| / diag`` until the target.
- ``saliency_order_scanpath``, the baseline: objects by decreasing bottom-up saliency (brightness ``sum(c_o)``)
  until the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .eccnet import EccNet

__all__ = ["ObjectDisplay", "eccnet_scanpath", "generate_displays", "greedy_search_scanpath", "render_display",
           "saliency_order_scanpath"]


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


def render_display(display: ObjectDisplay, index: int, grid: tuple[int, int], cell_px: int | None = None,
                   background: float = 0.5) -> tuple[Tensor, Tensor]:
    """Display ``index`` as an image ``(3, rows * cell_px, cols * cell_px)`` and its objects' cells ``(O, H, W)``.

    Each crop is centred in its grid cell (``cell_px`` defaults to the crop size) on ``background`` grey; mask
    ``o`` is the whole cell of object ``o``, in object order.
    """
    rows, cols = grid
    crop = display.crops.shape[-1]
    cell_px = crop if cell_px is None else cell_px
    if not isinstance(cell_px, int) or cell_px < crop:
        raise ValueError(f"cell_px must be an int >= the crop size {crop}, got {cell_px!r}")
    if not 0 <= index < display.crops.shape[0]:
        raise ValueError(f"index must be in [0, {display.crops.shape[0]}), got {index!r}")
    cells = display.cells[index].tolist()
    if any(not (0 <= r < rows and 0 <= c < cols) for r, c in cells):
        raise ValueError(f"grid {grid} does not hold the display's cells {cells}")
    crops = display.crops[index]
    image = torch.full((3, rows * cell_px, cols * cell_px), background, dtype=crops.dtype, device=crops.device)
    masks = torch.zeros(len(cells), rows * cell_px, cols * cell_px, dtype=torch.bool, device=crops.device)
    offset = (cell_px - crop) // 2
    for o, (r, c) in enumerate(cells):
        top, left = r * cell_px, c * cell_px
        image[:, top + offset: top + offset + crop, left + offset: left + offset + crop] = crops[o]
        masks[o, top: top + cell_px, left: left + cell_px] = True
    return image, masks


def eccnet_scanpath(model: EccNet, display: ObjectDisplay, grid: tuple[int, int], cell_px: int | None = None,
                    background: float = 0.5, corner_bias: int = 16,
                    dog: tuple[tuple[int, float], tuple[int, float]] = ((3, 1.0), (5, 3.0))) -> list[list[int]]:
    """Object-index scanpaths of eccNET's fixation loop on the rendered displays, each ending on the target.

    The start (display centre) is not an object fixation and is left out. Recognition needs the fixation inside
    the target's cell (``ior_size=1``); the budget ``O + 1`` with one cell inhibited per fixation always reaches it.
    """
    out = []
    for b in range(display.crops.shape[0]):
        image, masks = render_display(display, b, grid, cell_px, background)
        t = int(display.target_index[b])
        result = model.search(image, display.target[b], masks[t], item_masks=masks, background=background,
                              corner_bias=corner_bias, ior_size=1, dog=dog)
        if not result.found:
            raise RuntimeError(f"eccNET did not reach the target of display {b} in {result.num_fixations} fixations")
        out.append(result.fixated_items)
    return out
