"""One least-recently-used cache for the derived data visattn keeps between calls, bounded by bytes.

Dense masks, FlexAttention block masks, tile and block-sparse plans and their device tensors are pure functions
of immutable arguments (a mask, a grid, a device), so they are computed once and kept. They all share one budget:
``$VISATTN_CACHE_BYTES`` (bytes, default 512 MiB; ``0`` keeps nothing), read at every insertion. When an entry
would exceed the budget, the least recently used entries, whatever their cache, are dropped first; an entry
larger than the whole budget is returned but not kept. Sizes count the tensors, NumPy arrays and bytes that a key
and its value hold (on any device), found through tuples, lists, dicts, dataclass fields and object attributes, plus
:data:`ENTRY_OVERHEAD` bytes per entry (so entries without arrays are bounded in number too).

:func:`clear_caches` (``visattn.clear_caches()``) empties everything. Inside ``torch.compile`` tracing the cache is
bypassed (the function is traced), as Dynamo does for ``functools.lru_cache``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["DEFAULT_CACHE_BYTES", "byte_cached", "cache_budget", "cache_bytes", "clear_caches", "nbytes_of"]

DEFAULT_CACHE_BYTES = 512 * 2**20
ENV_VAR = "VISATTN_CACHE_BYTES"
ENTRY_OVERHEAD = 512
"""Bytes charged per entry on top of its arrays: the key, the Python objects (an estimate)."""

F = TypeVar("F", bound=Callable[..., Any])

_LOCK = threading.Lock()
_ENTRIES: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
_TOTAL = [0]


def cache_budget() -> int:
    """The byte budget: ``$VISATTN_CACHE_BYTES`` or :data:`DEFAULT_CACHE_BYTES`."""
    raw = os.environ.get(ENV_VAR)
    if raw is None or raw == "":
        return DEFAULT_CACHE_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be a number of bytes >= 0, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{ENV_VAR} must be a number of bytes >= 0, got {raw!r}")
    return value


def nbytes_of(value: Any, _seen: set[int] | None = None) -> int:
    """Bytes of the tensors and NumPy arrays ``value`` holds, each storage counted once."""
    seen = set() if _seen is None else _seen
    if id(value) in seen or value is None or isinstance(value, (str, bytes, int, float, bool, torch.dtype)):
        return len(value) if isinstance(value, bytes) else 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            return 0
        if value.layout != torch.strided:  # sparse and nested tensors: their elements, no shared-storage check
            return value.numel() * value.element_size()
        storage = value.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int) and type(value).__module__ == "numpy":
        return nbytes
    if isinstance(value, dict):
        return sum(nbytes_of(v, seen) for v in value.values())
    if isinstance(value, (tuple, list, set, frozenset)):
        return sum(nbytes_of(v, seen) for v in value)
    if dataclasses.is_dataclass(value):
        return sum(nbytes_of(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    attributes = getattr(value, "__dict__", None)
    return sum(nbytes_of(v, seen) for v in attributes.values()) if isinstance(attributes, dict) else 0


def cache_bytes() -> int:
    """Bytes held by the cache now."""
    return _TOTAL[0]


def clear_caches() -> None:
    """Drop every cached mask, plan and device tensor (they are rebuilt on next use)."""
    with _LOCK:
        _ENTRIES.clear()
        _TOTAL[0] = 0


def _insert(key: tuple, value: Any) -> None:
    size = nbytes_of((key, value)) + ENTRY_OVERHEAD
    budget = cache_budget()
    with _LOCK:
        old = _ENTRIES.pop(key, None)
        if old is not None:
            _TOTAL[0] -= old[1]
        if size > budget:
            return
        while _ENTRIES and _TOTAL[0] + size > budget:
            _, (_, dropped) = _ENTRIES.popitem(last=False)
            _TOTAL[0] -= dropped
        _ENTRIES[key] = (value, size)
        _TOTAL[0] += size


def cache_get(key: tuple) -> tuple[bool, Any]:
    """``(True, value)`` when ``key`` is cached (and mark it most recently used), else ``(False, None)``."""
    with _LOCK:
        hit = _ENTRIES.get(key)
        if hit is None:
            return False, None
        _ENTRIES.move_to_end(key)
        return True, hit[0]


def cache_put(key: tuple, value: Any) -> Any:
    """Keep ``value`` under ``key`` within the byte budget; return it."""
    _insert(key, value)
    return value


def byte_cached(fn: F) -> F:
    """Memoise ``fn`` (hashable arguments, like ``functools.lru_cache``) in the shared byte-bounded cache.

    ``fn.cache_clear()`` drops this function's entries only.
    """
    name = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        key = (name, args, tuple(sorted(kwargs.items())))
        found, value = cache_get(key)
        if found:
            return value
        return cache_put(key, fn(*args, **kwargs))

    def cache_clear() -> None:
        with _LOCK:
            for key in [k for k in _ENTRIES if k[0] == name]:
                _TOTAL[0] -= _ENTRIES.pop(key)[1]

    wrapper.cache_clear = cache_clear  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
