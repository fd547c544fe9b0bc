"""Argument checks shared by the feature-map modules: each error names the argument, its value and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def positive_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; ``TypeError`` for non-ints (bools included), ``ValueError`` below it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


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
