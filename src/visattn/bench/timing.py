"""Wall-clock timing: one call, a burst of calls, bursts of several functions interleaved sample by sample, the
summary of repeated timings (median with interquartile spread) and the Hodges-Lehmann estimate of a paired ratio."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings in milliseconds: median, quartiles, extremes and the raw samples."""

    samples_ms: tuple[float, ...]
    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float

    @property
    def spread_ms(self) -> float:
        """The interquartile range ``p75 - p25``."""
        return self.p75_ms - self.p25_ms

    @property
    def relative_spread(self) -> float:
        """The interquartile range as a fraction of the median (inf for a zero median with a spread)."""
        if self.median_ms > 0:
            return self.spread_ms / self.median_ms
        return 0.0 if self.spread_ms == 0 else math.inf


def summarize(samples_ms: Sequence[float]) -> Timing:
    """Median, quartiles (linear interpolation) and extremes of ``samples_ms``."""
    if not samples_ms:
        raise ValueError("samples_ms must hold at least one timing, got an empty sequence")
    values = np.asarray(samples_ms, dtype=np.float64)
    p25, median, p75 = np.percentile(values, [25.0, 50.0, 75.0])
    return Timing(tuple(float(v) for v in values), float(median), float(p25), float(p75), float(values.min()),
                  float(values.max()))


def hodges_lehmann_ratio(ratios: Sequence[float]) -> float:
    """The Hodges-Lehmann estimate of a ratio from per-round ratios: ``exp`` of the median of the Walsh averages
    ``(l_i + l_j) / 2``, ``i <= j``, of their logarithms ``l`` (Hodges & Lehmann 1963).

    Like the median it ignores a few wild rounds (breakdown point 29%), but it uses the values, not only their order:
    where ten rounds fall on two levels (a memory-bound mixer on a shared VM), the median goes from one level to the
    other as the rounds on the high level go from 4 to 6, while this estimate stays at the levels' geometric middle
    for 4, 5 and 6 and moves by half the gap at a time. Its asymptotic efficiency on normal samples is 95% of the
    mean's, against the median's 64%. For one ratio it is that ratio.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.asarray(ratios, dtype=np.float64))
    if logs.size == 0 or not np.all(np.isfinite(logs)):
        raise ValueError(f"ratios must be one or more finite numbers > 0, got {list(ratios)!r}")
    i, j = np.triu_indices(logs.size)
    return float(np.exp(np.median((logs[i] + logs[j]) / 2)))


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (a no-op on the CPU, whose ops are synchronous)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds one call of ``fn`` takes, waiting for the device before and after."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def calls_per_sample(seconds_per_call: float, min_sample_s: float) -> int:
    """How many consecutive calls make one timing sample of at least ``min_sample_s`` seconds (timeit's autorange):
    a call of a few milliseconds timed alone, right after a long call of something else, measures the transition
    (clock and cache warm-up) more than itself."""
    if seconds_per_call < 0:
        raise ValueError(f"seconds_per_call must be >= 0, got {seconds_per_call}")
    if min_sample_s < 0:
        raise ValueError(f"min_sample_s must be >= 0, got {min_sample_s}")
    return max(1, math.ceil(min_sample_s / max(seconds_per_call, 1e-9)))


def time_burst(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """Wall and CPU (all threads) seconds per call of ``calls`` consecutive calls of ``fn`` on the CPU."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def interleaved_bursts(fns: Sequence[Callable[[], object]], calls: Sequence[int], repeats: int,
                       sync: Callable[[], None]) -> list[list[float]]:
    """Milliseconds per call of each function in ``fns``, ``repeats`` samples each, taken in rounds: one burst of
    ``calls[i]`` consecutive calls of ``fns[0]``, then of ``fns[1]``, ... then the next round. Each function so
    sees the same drift of machine load as the others, and a ratio of medians compares like with like. ``sync``
    waits for the device before and after each burst (inside the timed span after it)."""
    if len(fns) != len(calls):
        raise ValueError(f"calls must give one count per function, got {len(calls)} counts for {len(fns)} functions")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in calls):
        raise ValueError(f"calls must all be ints >= 1, got {list(calls)!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, count, times in zip(fns, calls, samples, strict=True):
            sync()
            start = time.perf_counter()
            for _ in range(count):
                fn()
            sync()
            times.append(1e3 * (time.perf_counter() - start) / count)
    return samples
