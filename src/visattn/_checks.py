"""Argument checks shared by every layer: each error names the argument, its value and what was expected."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

Shape = tuple[int, ...]


def positive_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; ``TypeError`` for non-ints (bools included), ``ValueError`` below it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_heads(dim: object, num_heads: object, dim_name: str = "dim") -> int:
    """``dim // num_heads``, the width of one head; a ValueError naming the argument when ``dim`` (called
    ``dim_name``) or ``num_heads`` is not a positive int (bools refused) or ``num_heads`` does not divide ``dim``."""
    for name, value in ((dim_name, dim), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if dim % num_heads:
        raise ValueError(f"{dim_name} must be divisible by num_heads, got {dim_name}={dim}, num_heads={num_heads}")
    return dim // num_heads


def check_image_batch(x: object, channels: int | None = None, name: str = "x") -> None:
    """A ValueError naming ``name`` unless ``x`` is a ``(B, C, H, W)`` tensor, with ``C == channels`` when given."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        raise ValueError(f"{name} must be an image batch (B, {'C' if channels is None else channels}, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def as_shape(shape: int | Sequence[int], name: str = "shape", max_dims: int | None = None) -> Shape:
    """Return ``shape`` as a tuple of positive ints, or raise naming ``name``."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {shape!r}")
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"{name} must contain ints, got {shape!r}")
        if s < 1:
            raise ValueError(f"{name} must contain positive sizes, got {tuple(shape)!r}")
        out.append(int(s))
    if not out:
        raise ValueError(f"{name} must have at least one dimension, got {tuple(shape)!r}")
    if max_dims is not None and len(out) > max_dims:
        raise ValueError(f"{name} must have at most {max_dims} dimensions, got {tuple(out)!r}")
    return tuple(out)


def per_axis(value: int | Sequence[int], ndim: int, name: str, minimum: int = 1) -> Shape:
    """Broadcast an int (or check a sequence) to one int per spatial axis, each >= ``minimum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        values = (value,) * ndim
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) != ndim:
            raise ValueError(f"{name} must have one entry per spatial axis ({ndim}), got {value!r}")
    else:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum} on every axis, got {value!r}")
    return values


def int_or_ints(value: int | Sequence[int], name: str, minimum: int = 1) -> int | tuple[int, ...]:
    """Check ``value`` is an int or a non-empty sequence of ints, each >= ``minimum``; tuples stay tuples."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return per_axis(value, max(len(value), 1), name, minimum)
    return per_axis(value, 1, name, minimum)[0]


def bool_or_bools(value: bool | Sequence[bool], name: str) -> bool | tuple[bool, ...]:
    """Check ``value`` is a bool or a non-empty sequence of bools; tuples stay tuples."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return per_axis_bool(value, max(len(value), 1), name)
    return per_axis_bool(value, 1, name)[0]


def per_axis_bool(value: bool | Sequence[bool], ndim: int, name: str) -> tuple[bool, ...]:
    """Broadcast a bool (or check a sequence of bools) to one flag per spatial axis."""
    if isinstance(value, bool):
        return (value,) * ndim
    if isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(v, bool) for v in value):
        if len(value) != ndim:
            raise ValueError(f"{name} must have one entry per spatial axis ({ndim}), got {value!r}")
        return tuple(value)
    raise TypeError(f"{name} must be a bool or a sequence of bools, got {value!r}")


def num_tokens(shape: Shape) -> int:
    """Number of tokens laid out on ``shape``."""
    return math.prod(shape)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Check q, k, v are ``(B, heads, N, head_dim)`` tensors that fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be shaped (B, heads, N, head_dim), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q={q.device}, k={k.device}, v={v.device}")
    if not q.is_floating_point():
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must agree on (B, heads, N), got k={tuple(k.shape)}, v={tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q and k must agree on (B, heads), got q={tuple(q.shape)}, k={tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share head_dim, got q={tuple(q.shape)}, k={tuple(k.shape)}")
    if q.shape[-1] < 1:
        raise ValueError(f"head_dim must be >= 1 (the last axis of q and k), got q={tuple(q.shape)}")


def check_attn_mask(attn_mask: object) -> None:
    """``attn_mask`` must be None or a bool (True = attend) or floating-point (additive) tensor; an integer mask is
    ambiguous (0/1 as a keep-mask, or additive) and is refused with a ``TypeError``."""
    if attn_mask is None:
        return
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool (True = attend) or floating point (additive), got {attn_mask.dtype}; "
                        "for a 0/1 integer mask pass attn_mask.bool()")


def check_tokens(n: int, shape: Shape, num_prefix_tokens: int, name: str = "q") -> None:
    """Check that ``n`` tokens are ``num_prefix_tokens`` prefix tokens then the grid ``shape``."""
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
    expected = num_prefix_tokens + num_tokens(shape)
    if n != expected:
        raise ValueError(
            f"{name} has N={n} tokens but shape={shape} with num_prefix_tokens={num_prefix_tokens} "
            f"describes {expected} (prod(shape) + num_prefix_tokens)"
        )


def check_scale(scale: object, name: str = "scale") -> float | None:
    """``scale`` as a Python float (None stays None): an int, float or NumPy real scalar that is finite; a tensor,
    a bool or a non-finite value raises, so nothing else reaches a kernel's ``double`` argument."""
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor):
        raise TypeError(f"{name} must be a Python float or None, got a tensor ({scale.dtype}, shape "
                        f"{tuple(scale.shape)}); pass float({name}) (it is a constant of the call, not data)")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(scale).__name__}")
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value
