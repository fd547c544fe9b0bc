"""Recurrent-state size of the linear-state mixers: one protocol, ``state_bytes``.

A linear-state mixer (linear attention, Hedgehog, Taylor/Based, InLine, L2ViT, elementwise-QK ...) can run as a
recurrence whose state does not grow with the number of tokens: a decoder keeps that state per layer instead of
softmax attention's key-value cache (``2 N d`` numbers per head, :func:`kv_cache_bytes`). Each such mixer's
functional module in :mod:`visattn.ops` has a ``*_state_bytes`` function with the formula, and its module in
:mod:`visattn.nn` a method of the :class:`RecurrentState` protocol that calls it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["RecurrentState", "kv_cache_bytes", "layout", "state_bytes"]


@runtime_checkable
class RecurrentState(Protocol):
    """A token mixer whose causal form is a recurrence with a state of fixed size."""

    def state_bytes(self, batch_size: int = 1, num_heads: int | None = None, head_dim: int | None = None,
                    value_dim: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the recurrent state for ``batch_size`` sequences of ``num_heads`` heads with queries and keys
        of ``head_dim`` and values of ``value_dim`` (default ``head_dim``) channels, held in ``dtype``."""
        ...


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def state_bytes(elements_per_head: int, batch_size: int, num_heads: int, dtype: torch.dtype) -> int:
    """``elements_per_head * batch_size * num_heads`` elements of ``dtype``, in bytes."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    _positive(batch_size, "batch_size")
    _positive(num_heads, "num_heads")
    return elements_per_head * batch_size * num_heads * dtype.itemsize


def layout(num_heads: int | None, head_dim: int | None, value_dim: int | None, *, default_heads: int | None = None,
           default_head_dim: int | None = None) -> tuple[int, int, int]:
    """``(num_heads, head_dim, value_dim)`` with a module's defaults filled in; ValueError naming a missing one."""
    num_heads = default_heads if num_heads is None else num_heads
    head_dim = default_head_dim if head_dim is None else head_dim
    if num_heads is None or head_dim is None:
        raise ValueError(f"state_bytes needs num_heads and head_dim, got num_heads={num_heads!r}, "
                         f"head_dim={head_dim!r}")
    value_dim = head_dim if value_dim is None else value_dim
    return _positive(num_heads, "num_heads"), _positive(head_dim, "head_dim"), _positive(value_dim, "value_dim")


def kv_cache_bytes(batch_size: int, num_heads: int, head_dim: int, num_tokens: int,
                   dtype: torch.dtype = torch.float32, value_dim: int | None = None) -> int:
    """Softmax attention's key-value cache after ``num_tokens`` tokens: ``N (d + Dv)`` elements per head."""
    _positive(head_dim, "head_dim")
    value_dim = head_dim if value_dim is None else _positive(value_dim, "value_dim")
    return state_bytes(_positive(num_tokens, "num_tokens") * (head_dim + value_dim), batch_size, num_heads, dtype)
