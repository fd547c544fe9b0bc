"""The scaling exponent of time against tokens: the slope of a least-squares line in log-log space, with its
standard error.

``time ~ c * N^alpha``, so ``log t = log c + alpha log N``; ``alpha`` is 2 for dense attention and 1 for
local attention with a fixed window, once N is large enough for the work to dominate fixed costs.

The standard error of the slope is the textbook one of simple linear regression,
``se(alpha) = sqrt(sum r_i^2 / (n - 2) / sum (x_i - mean x)^2)`` with residuals ``r_i`` and ``x = log N``: it
needs at least three points (one degree of freedom left). The benchmark reports an exponent only where it is
sound: at least :data:`MIN_FIT_POINTS` sizes with a time and a standard error of at most :data:`MAX_FIT_ERROR`.

A call also costs a fixed amount whatever ``N`` is (Python dispatch, argument checks, starting the threads: about
0.1 ms for a local mixer on two cores), and at the default sizes that is a third of a window mixer's smallest time,
which bends a log-log line to about 0.8 although its work grows as ``N``. :func:`fit_exponent_above_fixed_cost`
therefore fits ``t(N) = t_0 + c (N^alpha - N_0^alpha)``, where ``t_0`` is the time measured at a tiny grid of
``N_0`` tokens (``visattn bench`` times the mixer on an 8 x 8 grid in the same rounds): ``alpha`` is then the
exponent of the work that grows with ``N``, the one a cost model predicts, and the plain log-log fit is kept beside
it.
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
    three distinct token counts) and the number of points it was fitted to; for a fit above a fixed cost
    (:func:`fit_exponent_above_fixed_cost`) also that cost ``fixed_ms`` and the token count it was measured at."""

    alpha: float
    stderr: float | None
    points: int
    fixed_ms: float | None = None
    fixed_tokens: int | None = None

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


def _work_residuals(alpha: float, x: np.ndarray, y: np.ndarray, x0: float) -> tuple[np.ndarray, float]:
    """Residuals of ``y = log c + log(N^alpha - N_0^alpha)`` (``x = log N``, ``x0 = log N_0``) at the best
    ``log c`` for this ``alpha``, and that ``log c``."""
    model = np.log(np.exp(alpha * x) - np.exp(alpha * x0))
    log_c = float((y - model).mean())
    return y - model - log_c, log_c


def fit_exponent_above_fixed_cost(tokens: Sequence[int], times: Sequence[float], fixed_tokens: int,
                                  fixed_time: float) -> ExponentFit | None:
    """The exponent of ``t(N) = t_0 + c (N^alpha - N_0^alpha)`` through the fixed-cost point ``(N_0, t_0) =
    (fixed_tokens, fixed_time)``: least squares of ``log(t - t_0)`` against ``log c + log(N^alpha - N_0^alpha)``
    over ``alpha`` in ``[0.1, 4]`` (``log c`` solved in closed form for each ``alpha``). Its standard error is the
    Gauss-Newton one, ``sqrt(s^2 [(J^T J)^-1]_alpha)`` with ``s^2 = sum r^2 / (n - 2)``, so it needs three distinct
    token counts, as the plain fit does. None when fewer than two token counts exceed ``N_0`` or any time at them is
    not above ``t_0`` (the fixed cost then is not separable from the work)."""
    _check(tokens, times)
    _check([fixed_tokens], [fixed_time])
    points = [(n, t) for n, t in zip(tokens, times, strict=True) if n > fixed_tokens]
    if len({n for n, _ in points}) < 2 or any(t <= fixed_time for _, t in points):
        return None
    x = np.log(np.asarray([n for n, _ in points], dtype=np.float64))
    y = np.log(np.asarray([t - fixed_time for _, t in points], dtype=np.float64))
    x0 = math.log(fixed_tokens)
    grid = np.linspace(0.1, 4.0, 391)
    losses = [float((_work_residuals(a, x, y, x0)[0] ** 2).sum()) for a in grid]
    best = int(np.argmin(losses))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    for _ in range(60):  # golden-section refinement inside the bracketing grid cells
        a, b = low + 0.382 * (high - low), low + 0.618 * (high - low)
        if (_work_residuals(a, x, y, x0)[0] ** 2).sum() < (_work_residuals(b, x, y, x0)[0] ** 2).sum():
            high = b
        else:
            low = a
    alpha = float((low + high) / 2)
    residuals, _ = _work_residuals(alpha, x, y, x0)
    stderr = None
    if len({n for n, _ in points}) >= 3:
        grown, grown0 = np.exp(alpha * x), math.exp(alpha * x0)
        d_alpha = (grown * x - grown0 * x0) / (grown - grown0)
        jacobian = np.stack([np.ones_like(x), d_alpha], axis=1)
        covariance = np.linalg.inv(jacobian.T @ jacobian) * float((residuals**2).sum()) / (len(x) - 2)
        stderr = math.sqrt(max(float(covariance[1, 1]), 0.0))
    return ExponentFit(alpha, stderr, len(x), fixed_time, fixed_tokens)
