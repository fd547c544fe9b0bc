"""Peak memory of one call: the most bytes allocated during the call and live at the same time.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, less what was allocated before.
- CPU: torch keeps no allocator statistics on the CPU and ``tracemalloc`` does not see torch's allocations, so
  the call runs once under ``torch.profiler.profile(profile_memory=True)``, which records every allocation and
  free of torch's CPU allocator (including buffers inside fused kernels) as signed byte counts in time order.
  The peak is the maximum of their running sum. Frees of blocks allocated before the call are not recorded by
  the profiler, so the count covers exactly what the call allocates: its intermediates and its outputs, not
  its inputs.

Kineto, the profiler's back end, writes status lines straight to file descriptor 2 when it starts and stops;
those two moments (not the measured call) run with that descriptor pointed at ``/dev/null``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

logger = logging.getLogger("visattn")


def peak_of_allocations(deltas: Iterable[int]) -> int:
    """The maximum running sum of signed allocation sizes (bytes, in time order), never below 0."""
    running = peak = 0
    for delta in deltas:
        running += delta
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(fn: Callable[[], object]) -> int | None:
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _stderr_to_devnull():
        prof.start()
    try:
        fn()
    finally:
        with _stderr_to_devnull():
            prof.stop()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        logger.warning("visattn.bench: the profiler returned no memory events; peak memory not measured")
        return None
    events = sorted((e for e in results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"),
                    key=lambda e: e.start_ns())
    return peak_of_allocations(e.nbytes() for e in events)


def _cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int | None:
    """Peak bytes allocated by one call of ``fn`` on ``device`` (module docstring); None on other devices."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak_bytes(fn, device)
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    return None
