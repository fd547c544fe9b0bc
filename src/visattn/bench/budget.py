"""Skip a benchmark size before it runs out of memory or time: estimates, budgets and the reasons shown.

Memory: :func:`estimate_memory_bytes` bounds what one call needs, inputs included, from the mixer's kind:

- dense softmax (and the SDPA baseline): the fused CPU/CUDA kernels keep O(N) state, so q, k, v and the
  output, three times that with the backward pass (gradients of all four, the saved statistics and the
  kernel's buffers measured 2.5 times on the CPU);
- a masked mixer whose mask type has a registered fast path: two ``B * heads * pairs`` score tensors (scores,
  weights), the tiles of a tiled path;
- any other mixer, masked or not: the dense path's ``N^2`` bool mask and ``N^2`` additive float mask plus two
  ``B * heads * N^2`` score tensors, doubled with the backward pass. An upper bound for most mixers.

Every estimate adds :data:`WORKSPACE_BYTES` for the per-thread tiles of fused kernels (about 0.7 MiB per thread
measured for CPU SDPA), which dominate at small N.

Once a mixer's peak memory has been measured at smaller sizes, :func:`predict_memory_bytes` extrapolates it
(a power law fitted to the measurements, exponent clamped to [1, 2]; quadratic from a single one) and the
estimate is the smaller of the two, so that linear-memory mixers are not held to the dense bound.

Time: before a size runs, its time per call is predicted from the largest smaller size already measured for the
same mixer as ``t * (N / N_0)^2`` (quadratic, the worst case of attention); after the warm-up calls (which pay
one-time set-up and count against no budget), one probe call is timed and checked too. A size over either budget
is skipped with the reason recorded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from ..masks import Mask
from ..nn import SoftmaxMixer
from ..ops.dispatch import structured
from .fit import fit_exponent

WORKSPACE_BYTES = 64 << 20
"""Allowance for kernel workspace added to every memory estimate (module docstring)."""

DEFAULT_MEMORY_FRACTION = 0.5
FALLBACK_MEMORY_BUDGET = 8 << 30

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_BYTES_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$")


def default_memory_budget() -> int:
    """Half the machine's physical memory, or 8 GiB where the OS does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return FALLBACK_MEMORY_BUDGET
    return int(total * DEFAULT_MEMORY_FRACTION) if total > 0 else FALLBACK_MEMORY_BUDGET


def parse_bytes(text: str) -> int:
    """Parse ``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"4096"`` (binary units) into bytes."""
    match = _BYTES_PATTERN.match(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"memory budget must be a size like '4096', '512M' or '2G', got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value < 1:
        raise ValueError(f"memory budget must be at least 1 byte, got {text!r}")
    return value


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units, e.g. ``"1.5 MiB"``."""
    if abs(n) < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def sdpa_memory_bytes(batch: int, heads: int, tokens: int, head_dim: int, itemsize: int, backward: bool) -> int:
    """Fused SDPA: q, k, v and the output, three times that when ``backward``, plus the kernel workspace."""
    io = 4 * batch * heads * tokens * head_dim * itemsize
    return (3 * io if backward else io) + WORKSPACE_BYTES


def estimate_memory_bytes(mixer: object, batch: int, heads: int, tokens: int, head_dim: int, itemsize: int,
                          backward: bool, pairs: int | None) -> int:
    """Bytes one call of ``mixer`` needs at most, inputs included (module docstring for the rules)."""
    base = sdpa_memory_bytes(batch, heads, tokens, head_dim, itemsize, backward)
    if isinstance(mixer, SoftmaxMixer):
        return base
    factor = 2 if backward else 1
    mask = getattr(mixer, "mask", None)
    if isinstance(mask, Mask) and pairs is not None and structured(mask):
        return base + factor * 2 * batch * heads * pairs * itemsize
    masks = tokens * tokens * (1 + itemsize)
    return base + masks + factor * 2 * batch * heads * tokens * tokens * itemsize


def predict_memory_bytes(history: Sequence[tuple[int, int]], tokens: int) -> int | None:
    """Peak bytes at ``tokens`` extrapolated from measured ``(N, peak bytes)`` with ``N < tokens``: from the
    largest such N by the exponent fitted to all of them (clamped to [1, 2]), or by 2 from a single one; None
    without measurements."""
    smaller = [(n, b) for n, b in history if n < tokens and b > 0]
    if not smaller:
        return None
    exponent = fit_exponent([n for n, _ in smaller], [b for _, b in smaller])
    exponent = 2.0 if exponent is None else min(2.0, max(1.0, exponent))
    n0, b0 = max(smaller)
    return round(b0 * (tokens / n0) ** exponent)


def memory_skip_reason(estimate: int, budget: int) -> str | None:
    """Why a call estimated at ``estimate`` bytes is skipped under ``budget``, or None if it fits."""
    if estimate > budget:
        return f"estimated memory {format_bytes(estimate)} > memory budget {format_bytes(budget)}"
    return None


def predict_seconds(history: Sequence[tuple[int, float]], tokens: int) -> tuple[int, float] | None:
    """``(N_0, t * (tokens / N_0)^2)`` from the largest measured ``(N_0, t)`` with ``N_0 < tokens``; None if
    nothing smaller was measured."""
    smaller = [(n, t) for n, t in history if n < tokens]
    if not smaller:
        return None
    n0, t0 = max(smaller)
    return n0, t0 * (tokens / n0) ** 2


def predicted_time_skip_reason(history: Sequence[tuple[int, float]], tokens: int, budget_s: float) -> str | None:
    """Why ``tokens`` is skipped because the predicted time per call exceeds ``budget_s``, or None."""
    prediction = predict_seconds(history, tokens)
    if prediction is not None and prediction[1] > budget_s:
        n0, seconds = prediction
        return f"predicted {seconds:.1f} s per call (quadratic from N={n0}) > time budget {budget_s:g} s"
    return None


def measured_time_skip_reason(seconds: float, budget_s: float) -> str | None:
    """Why a size is skipped because a call after the warm-up (the probe) took ``seconds`` > ``budget_s``, or
    None."""
    if seconds > budget_s:
        return f"a call took {seconds:.1f} s after warm-up > time budget {budget_s:g} s"
    return None

