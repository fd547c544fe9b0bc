"""Each mixer timed in a fresh process, so that what ran before it cannot change its time (``visattn bench
--isolate``, ``BenchSettings(isolate=True)``).

Timed one after another in one process, a few fast, memory-bound rows disagreed between runs by up to 1.5x while
the same rows timed alone agreed within a few percent (``inline`` at 4,096 tokens: 1.89, 2.35 and 2.95 ms in three
default runs; 1.83, 1.81 and 1.87 ms alone), their samples switching between two levels within one run.
:class:`CaseProcesses` runs each case in a child process forked from a ``forkserver`` that imported torch and
visattn once and never ran an OpenMP region (forking after one is unsafe with GNU OpenMP), so every case starts
from the same state. Measured on the idle 2-core machine (three default runs each way, docs/benchmarks.md), this
did not make runs agree better: 54 of 58 rows within 20% isolated against 55 of 58 in one process, other rows
disagreeing instead (``inline`` and ``linear`` then sat at one level in every run, but not the level of a process
of their own), and it cost about 45 s a run. It is therefore not the default. What it does give: a child that
dies (a crash inside a kernel) becomes skipped records with the exit reason instead of ending the run.

The child takes the parent's thread count and allocator setting (:mod:`visattn.bench.allocator`), measures with
:func:`visattn.bench.runner.measure_case`, and sends its records back. Where ``forkserver`` does not exist
(Windows) or the device is not the CPU (a CUDA context cannot be forked), cases run in the calling process.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import NamedTuple

import torch

from .allocator import KEPT, allocator_state, keep_freed_memory
from .case import BenchCase
from .layout import Size
from .record import BenchRecord
from .settings import BenchSettings

PRELOADED = ("torch", "torch.nn.functional", "numpy", "visattn", "visattn.bench.runner")
"""Modules the forkserver imports once, so that a child starts without importing them again."""

History = list[tuple[int, float]]


def isolation_available(settings: BenchSettings) -> bool:
    """Whether cases can run in their own processes: a CPU run where ``forkserver`` exists."""
    return settings.torch_device.type == "cpu" and "forkserver" in multiprocessing.get_all_start_methods()


class CaseJob(NamedTuple):
    """What a child needs to measure one case: the case, its sizes, the settings, the SDPA time history so far, and
    the parent's thread count and allocator setting."""

    case: BenchCase
    sizes: list[Size]
    settings: BenchSettings
    sdpa_history: History
    threads: int
    keep_memory: bool


def measure_job(job: CaseJob) -> tuple[list[BenchRecord], History]:
    """Run in the child: take the parent's threads and allocator, measure the case, return its records and the
    updated SDPA history."""
    torch.set_num_threads(job.threads)
    if job.keep_memory:
        keep_freed_memory()
    from .runner import measure_case

    history = list(job.sdpa_history)
    return measure_case(job.case, job.sizes, job.settings, history), history


class CaseProcesses:
    """A context manager that measures one case per fresh child process (see the module docstring).

    ``measure(case, sizes, settings, sdpa_history)`` returns the case's records and the updated SDPA time history
    (which predicts the baseline's time budget for the next cases). ``target`` is what the child runs on the
    :class:`CaseJob`: :func:`measure_job`, or in tests something that crashes. Mixers must be registered when
    visattn is imported (the child imports it afresh; one registered later in the calling script is unknown there).
    """

    def __init__(self, target: Callable[[CaseJob], tuple[list[BenchRecord], History]] = measure_job) -> None:
        self._target = target
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> CaseProcesses:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOADED))
        self._executor = ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def measure(self, case: BenchCase, sizes: Sequence[Size], settings: BenchSettings,
                sdpa_history: History) -> tuple[list[BenchRecord], History]:
        if self._executor is None:
            raise RuntimeError("CaseProcesses.measure must be called inside its with block")
        job = CaseJob(case, list(sizes), settings, list(sdpa_history), torch.get_num_threads(),
                      allocator_state() == KEPT)
        future = self._executor.submit(self._target, job)
        try:
            return future.result()
        except BrokenProcessPool as err:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.__enter__()
            return [_died(case, size, settings, err) for size in sizes], sdpa_history


def _died(case: BenchCase, size: Size, settings: BenchSettings, err: BaseException) -> BenchRecord:
    from .layout import nominal_tokens

    s = settings
    side = [size] if isinstance(size, int) else list(size)
    return BenchRecord(case.name, case.label, dict(case.kwargs), side, nominal_tokens(size), s.num_prefix_tokens,
                       s.heads, s.head_dim, s.batch, s.dtype, s.device, s.backward, s.repeats,
                       skipped=f"the process timing it died ({type(err).__name__}: {err})",
                       sdpa_skipped="mixer not timed")
