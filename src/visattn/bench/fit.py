"""The scaling exponent of time against tokens: the slope of a least-squares line in log-log space.

``time ~ c * N^alpha``, so ``log t = log c + alpha log N``; ``alpha`` is 2 for dense attention and 1 for
local attention with a fixed window, once N is large enough for the work to dominate fixed costs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit_exponent(tokens: Sequence[int], times: Sequence[float]) -> float | None:
    """Least-squares slope of ``log(times)`` against ``log(tokens)``; None with fewer than two distinct token
    counts. Every time must be > 0."""
    if len(tokens) != len(times):
        raise ValueError(f"tokens and times must have the same length, got {len(tokens)} and {len(times)}")
    if any(n <= 0 for n in tokens):
        raise ValueError(f"tokens must all be > 0, got {list(tokens)!r}")
    if any(not t > 0 for t in times):
        raise ValueError(f"times must all be > 0, got {list(times)!r}")
    if len(set(tokens)) < 2:
        return None
    x = np.log(np.asarray(tokens, dtype=np.float64))
    y = np.log(np.asarray(times, dtype=np.float64))
    x_centred = x - x.mean()
    return float((x_centred * (y - y.mean())).sum() / (x_centred * x_centred).sum())
