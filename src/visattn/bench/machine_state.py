"""A probe of the machine's state, timed at every case visit of ``visattn bench``, so that a run can tell when the
machine changed speed under it and two runs can tell whether they ran on the same machine.

On the 2-core development VM the two-thread speed of mixers built from many memory-bound torch ops switches between
two levels for periods from tens of seconds to a whole run, while dense SDPA (compute-bound) does not move
(docs/benchmarks.md, "Two speeds"); no statistic inside a run can make a run spent at one level agree with a run
spent at the other. The probe is a short chain of such ops on a 1.2 MB tensor whose consecutive ops split the data
differently between threads: a copy through a permutation, an elementwise op, and the permutation back
(:func:`probe_call`). Timed back to back with ``swin_v2`` at 2,304 tokens for six minutes (2 threads, idle) it
followed that mixer's two levels (0.47 against 1.0-1.1 ms per call, correlation 0.95 of 5-sample running medians)
where a streaming copy went the other way and SDPA did not move.

Each sample is a burst of consecutive calls lasting about :data:`SAMPLE_SECONDS` (5 ms), taken right before a case's
bursts: about 1.5 s in a default run. :func:`state_summary` says whether the samples split into levels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .timing import calls_per_sample, interleaved_bursts, synchronizer, time_call

PROBE_SHAPE = (1, 4, 2304, 32)
"""``(batch, heads, tokens, head_dim)`` of the probe's tensor: 1.2 MB of float32, a mixer's q at the default 48 x 48."""

SAMPLE_SECONDS = 0.005
"""Length of one probe burst: long enough to hold several calls, short enough to add little to a visit."""

LEVELS_RATIO = 1.5
"""The samples' 90th over 10th percentile from which the machine is said to have changed speed during the run."""

MIN_SAMPLES = 8
"""Fewer samples than this say nothing about levels."""


def probe_call(device: torch.device) -> Callable[[], None]:
    """The probe on ``device``: ``x * 1.5`` copied through a ``(B, N, H, D)`` permutation, ``tanh``, and copied back
    to ``(B, H, N, D)``, without gradients, on a seeded standard-normal ``x`` of :data:`PROBE_SHAPE`."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_SHAPE, generator=generator).to(device)
    b, h, n, d = PROBE_SHAPE

    def run() -> None:
        with torch.no_grad():
            flat = (x * 1.5).permute(0, 2, 1, 3).reshape(b, n, h * d).contiguous()
            torch.tanh(flat).reshape(b, n, h, d).permute(0, 2, 1, 3).contiguous()

    return run


@dataclass
class StateProbe:
    """The probe, ready to time: its call, the device's synchronizer, the calls in one burst and every sample taken
    so far, in time order."""

    call: Callable[[], None]
    sync: Callable[[], None]
    count: int
    samples_ms: list[float] = field(default_factory=list)

    @classmethod
    def create(cls, device: torch.device) -> StateProbe:
        """Build the probe on ``device``, make one untimed call and size its burst from one timed call."""
        call, sync = probe_call(device), synchronizer(device)
        call()
        return cls(call, sync, calls_per_sample(time_call(call, sync), SAMPLE_SECONDS))

    def sample(self) -> float:
        """Milliseconds per call of one burst, also appended to :attr:`samples_ms`."""
        ((milliseconds,),) = interleaved_bursts([self.call], [self.count], 1, self.sync)
        self.samples_ms.append(milliseconds)
        return milliseconds


def state_summary(samples_ms: Sequence[float]) -> dict[str, float | int | bool | None]:
    """The probe's samples of one run summarised: how many, median, 10th and 90th percentile (None without
    samples) and ``changed``: whether the 90th percentile is :data:`LEVELS_RATIO` times the 10th or more, from
    :data:`MIN_SAMPLES` samples (the machine ran at more than one speed during the run)."""
    if not samples_ms:
        return {"samples": 0, "median_ms": None, "p10_ms": None, "p90_ms": None, "changed": False}
    p10, median, p90 = (float(v) for v in np.percentile(np.asarray(samples_ms, dtype=np.float64), [10, 50, 90]))
    changed = len(samples_ms) >= MIN_SAMPLES and p90 >= LEVELS_RATIO * p10
    return {"samples": len(samples_ms), "median_ms": median, "p10_ms": p10, "p90_ms": p90, "changed": changed}


def state_note(summary: dict[str, float | int | bool | None]) -> str:
    """One line for under the results table: the probe's median and spread, and a warning where it changed."""
    if not summary["samples"]:
        return ""
    line = (f"machine state probe: median {summary['median_ms']:.3f} ms per call, 10th-90th percentile "
            f"{summary['p10_ms']:.3f}-{summary['p90_ms']:.3f} ms over {summary['samples']} visits")
    if summary["changed"]:
        line += (". The machine changed speed during this run: memory-bound rows made of many torch ops may not "
                 "compare with another run; compare runs whose probe medians agree, or use --threads 1 "
                 "(docs/benchmarks.md, 'Two speeds')")
    return line
