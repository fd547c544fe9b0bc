"""The scaling exponent of time against tokens: the slope of a least-squares line in log-log space, with its
standard error.

``time ~ c * N^alpha``, so ``log t = log c + alpha log N``; ``alpha`` is 2 for dense attention and 1 for
local attention with a fixed window, once N is large enough for the work to dominate fixed costs.

The standard error of the slope is the textbook one of simple linear regression,
``se(alpha) = sqrt(sum r_i^2 / (n - 2) / sum (x_i - mean x)^2)`` with residuals ``r_i`` and ``x = log N``: it
needs at least three points (one degree of freedom left). The benchmark reports an exponent only where it is
sound: at least :data:`MIN_FIT_POINTS` sizes with a time and a standard error of at most :data:`MAX_FIT_ERROR`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_FIT_POINTS = 3
"""Fewest distinct token counts for a reported exponent (two points always lie on a line: no error estimate)."""

MAX_FIT_ERROR = 0.1
"""Largest standard error of a reported exponent; a fit less certain than this is left out of the tables."""


@dataclass(frozen=True)
class ExponentFit:
    """The least-squares slope ``alpha`` of ``log t`` against ``log N``, its standard error (None with fewer than
    three distinct token counts) and the number of points it was fitted to."""

    alpha: float
    stderr: float | None
    points: int

    def sound(self, max_error: float = MAX_FIT_ERROR, min_points: int = MIN_FIT_POINTS) -> bool:
        """Whether the fit has ``min_points`` points or more and a standard error of at most ``max_error``."""
        return self.points >= min_points and self.stderr is not None and self.stderr <= max_error


def _check(tokens: Sequence[int], times: Sequence[float]) -> None:
    if len(tokens) != len(times):
        raise ValueError(f"tokens and times must have the same length, got {len(tokens)} and {len(times)}")
    if any(n <= 0 for n in tokens):
        raise ValueError(f"tokens must all be > 0, got {list(tokens)!r}")
    if any(not t > 0 for t in times):
        raise ValueError(f"times must all be > 0, got {list(times)!r}")


def fit_exponent_with_error(tokens: Sequence[int], times: Sequence[float]) -> ExponentFit | None:
    """The :class:`ExponentFit` of ``times`` against ``tokens``; None with fewer than two distinct token counts.
    Every time must be > 0."""
    _check(tokens, times)
    if len(set(tokens)) < 2:
        return None
    x = np.log(np.asarray(tokens, dtype=np.float64))
    y = np.log(np.asarray(times, dtype=np.float64))
    x_centred = x - x.mean()
    sxx = float((x_centred * x_centred).sum())
    alpha = float((x_centred * (y - y.mean())).sum() / sxx)
    stderr = None
    if len(set(tokens)) >= 3:
        residuals = y - y.mean() - alpha * x_centred
        stderr = math.sqrt(float((residuals * residuals).sum()) / (len(x) - 2) / sxx)
    return ExponentFit(alpha, stderr, len(x))


def fit_exponent(tokens: Sequence[int], times: Sequence[float]) -> float | None:
    """Least-squares slope of ``log(times)`` against ``log(tokens)``; None with fewer than two distinct token
    counts. Every time must be > 0."""
    fit = fit_exponent_with_error(tokens, times)
    return None if fit is None else fit.alpha
