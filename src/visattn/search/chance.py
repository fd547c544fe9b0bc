"""The chance baseline of *Visual Search Asymmetry: Deep Nets and Humans Share Similar Inherent Biases*
(Gupta et al., NeurIPS 2021, arXiv:2106.02953): fixate the display's items in a uniformly random order, never
twice, until the target is found or the budget is spent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .eccnet import SearchResult


def chance_search(item_masks: torch.Tensor, target_item: int, *, candidates: Sequence[int] | None = None,
                  max_fixations: int | None = None, generator: torch.Generator | None = None) -> SearchResult:
    """Random search over grid cells: each fixation is the centre of a not yet visited candidate cell.

    ``item_masks`` (K, H, W) are the cells, ``target_item`` the target's cell, ``candidates`` the cells that may be
    fixated (default all K), ``max_fixations`` the budget (default K + 1). The start is the display centre.
    """
    if item_masks.dim() != 3 or item_masks.shape[0] < 1:
        raise ValueError(f"item_masks must be (K, H, W), got {tuple(item_masks.shape)}")
    k, h, w = item_masks.shape
    candidates = list(range(k)) if candidates is None else [int(i) for i in candidates]
    if not 0 <= target_item < k or target_item not in candidates:
        raise ValueError(f"target_item must be one of the candidate cells {candidates}, got {target_item}")
    if any(not 0 <= i < k for i in candidates):
        raise ValueError(f"candidates must index the {k} cells, got {candidates}")
    budget = k + 1 if max_fixations is None else max_fixations
    order = torch.randperm(len(candidates), generator=generator).tolist()
    result = SearchResult(fixations=[(h // 2, w // 2)], found=False)
    for index in order[:budget]:
        cell = candidates[index]
        rows, cols = torch.nonzero(item_masks[cell], as_tuple=True)
        result.fixations.append((int(rows.float().mean()), int(cols.float().mean())))
        result.fixated_items.append(cell)
        if cell == target_item:
            result.found = True
            break
    return result
