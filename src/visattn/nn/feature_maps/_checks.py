"""Argument checks shared by the feature-map modules: each error names the argument, its value and what was expected.

``positive_int`` is the package-wide check of :mod:`visattn._checks`, re-exported here."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..._checks import positive_int

__all__ = ["choice", "divisible", "feature_map", "positive_int"]


def divisible(value: int, divisor: int, name: str, divisor_name: str) -> None:
    """``ValueError`` unless ``divisor`` divides ``value``."""
    if value % divisor:
        raise ValueError(f"{name}={value} must be divisible by {divisor_name}={divisor}")


def choice(value: object, name: str, options: Sequence[str]) -> str:
    """``value`` when it is one of ``options``; ``ValueError`` listing them otherwise."""
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)!r}, got {value!r}")
    return value  # type: ignore[return-value]


def feature_map(x: object, channels: int, name: str = "x") -> Tensor:
    """Check ``x`` is a ``(B, channels, H, W)`` tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be a (B, {channels}, H, W) tensor, got shape {tuple(x.shape)}")
    return x
