"""Argument checks and the working dtype shared by the transforms; each error names the argument and its value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

REDUCED = (torch.float16, torch.bfloat16)


def pair(value: Sequence[int], name: str, minimum: tuple[int, int]) -> tuple[int, int]:
    """``value`` as a pair of ints, each ``>= minimum``."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{name} must be a pair of ints, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be a pair of ints, got {value!r}")
    if value[0] < minimum[0] or value[1] < minimum[1]:
        raise ValueError(f"{name} must be >= {minimum} elementwise, got {tuple(value)!r}")
    return int(value[0]), int(value[1])


def real(value: object, name: str) -> float:
    """``value`` as a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_map(t: Tensor, name: str, layout: str) -> None:
    """``t`` must be a 4-D floating-point tensor laid out as ``layout``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be shaped {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")


def work_dtype(t: Tensor) -> torch.dtype:
    """The dtype to resample ``t`` in: float32 for half precision (``grid_sample`` grids), else ``t.dtype``."""
    return torch.float32 if t.dtype in REDUCED else t.dtype
