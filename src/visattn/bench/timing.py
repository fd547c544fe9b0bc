"""Wall-clock timing: one call, a burst of calls, and the summary of repeated timings (median with interquartile
spread)."""

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


def summarize(samples_ms: Sequence[float]) -> Timing:
    """Median, quartiles (linear interpolation) and extremes of ``samples_ms``."""
    if not samples_ms:
        raise ValueError("samples_ms must hold at least one timing, got an empty sequence")
    values = np.asarray(samples_ms, dtype=np.float64)
    p25, median, p75 = np.percentile(values, [25.0, 50.0, 75.0])
    return Timing(tuple(float(v) for v in values), float(median), float(p25), float(p75), float(values.min()),
                  float(values.max()))


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
