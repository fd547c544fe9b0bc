"""Argument checks shared by the lens metrics: each error names the argument, its value and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

TokenSelection = Tensor | Sequence[int] | slice | None


def tensor(value: object, name: str, min_dim: int = 1, floating: bool = True) -> Tensor:
    """``value`` as checked: a torch tensor with at least ``min_dim`` dims (floating point unless told otherwise)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def token_mask(selection: TokenSelection, length: int, name: str, device: torch.device | None = None) -> Tensor:
    """A bool mask of ``length`` tokens from a selection: None (all), a slice, a bool mask of that length, or
    indices (negative indices count from the end)."""
    if selection is None:
        return torch.ones(length, dtype=torch.bool, device=device)
    if isinstance(selection, slice):
        mask = torch.zeros(length, dtype=torch.bool, device=device)
        mask[selection] = True
        return mask
    if isinstance(selection, Tensor) and selection.dtype == torch.bool:
        if selection.shape != (length,):
            raise ValueError(f"{name} as a bool mask must have shape ({length},), got {tuple(selection.shape)}")
        return selection.to(device)
    if isinstance(selection, Tensor):
        if selection.is_floating_point() or selection.dim() > 1:
            raise TypeError(f"{name} must be a bool mask, a slice or 1-d integer indices, got {selection.dtype} "
                            f"tensor of shape {tuple(selection.shape)}")
        indices = selection.reshape(-1).tolist()
    elif isinstance(selection, Sequence) and not isinstance(selection, str):
        indices = list(selection)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise TypeError(f"{name} must contain ints, got {selection!r}")
    else:
        raise TypeError(f"{name} must be None, a slice, a bool mask or integer indices, got {selection!r}")
    bad = [i for i in indices if not -length <= i < length]
    if bad:
        raise ValueError(f"{name} indices {bad} out of range for {length} tokens")
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    mask[torch.as_tensor(indices, dtype=torch.long, device=device) % max(length, 1)] = True
    return mask


def layer_stack(maps: Tensor | Sequence[Tensor], name: str, dims: int) -> Tensor:
    """Per-layer tensors stacked on a new leading layer dim; each layer must have exactly ``dims`` dims."""
    if isinstance(maps, Tensor):
        tensor(maps, name, min_dim=0)
        if maps.dim() != dims + 1:
            raise ValueError(f"{name} must be (layers, ...) with {dims + 1} dims, got shape {tuple(maps.shape)}")
        if maps.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one layer, got shape {tuple(maps.shape)}")
        return maps
    if not isinstance(maps, Sequence) or isinstance(maps, str) or not maps:
        raise TypeError(f"{name} must be a tensor (layers, ...) or a non-empty sequence of per-layer tensors, "
                        f"got {type(maps).__name__}")
    for index, item in enumerate(maps):
        tensor(item, f"{name}[{index}]", min_dim=dims)
        if item.dim() != dims:
            raise ValueError(f"{name}[{index}] must have {dims} dims, got shape {tuple(item.shape)}")
        if item.shape != maps[0].shape:
            raise ValueError(f"{name}[{index}] has shape {tuple(item.shape)}, but {name}[0] has "
                             f"{tuple(maps[0].shape)}; every layer must have the same shape")
    return torch.stack(list(maps))


def square_last(value: Tensor, name: str) -> int:
    """The size N of the last two dims ``(N, N)`` of ``value``, or raise."""
    if value.shape[-1] != value.shape[-2]:
        raise ValueError(f"{name} must end in a square (N, N) map, got shape {tuple(value.shape)}")
    return value.shape[-1]
