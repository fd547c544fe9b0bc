"""Run the benchmark: every mixer at every size, timed against dense SDPA on the same q, k, v in the same run.

Before anything is timed, every native kernel library is built (:mod:`visattn.bench.prebuild`), so that no build
counts against a budget or a time. Then every case is probed, one after another; for each, its sizes are prepared
smallest first (so each size's time can be predicted from the smaller ones): count the attended pairs, estimate the
memory, skip if a budget would be exceeded, make q, k, v, make ``warmup`` untimed calls (one-time set-up), one
probe call of the mixer and one of dense ``scaled_dot_product_attention`` (no mask) timed against the time budget,
and one profiled call of each for peak memory; then the mixer on a tiny grid (:data:`FIXED_COST_SIDE`), for the
fixed cost of a call. A case's bursts are one burst of the mixer and one of SDPA at every size, so that every size
and its baseline see the same machine, and one of the tiny grid; each lasts at least ``min_sample_s`` (sized by the
probe call). They are taken in ``repeats`` rounds across cases (:mod:`visattn.bench.schedule`): round ``r`` takes
every case's bursts, the cases in a seeded order of their own, before round ``r + 1`` starts, so that each case's
rounds spread over the whole run; the inputs and mixers of every case stay alive until the last round. Where that
would exceed the memory budget, the cases are timed in groups, in the limit case by case (each case's rounds right
after its probes, as with ``rounds_across_cases=False`` and ``isolate``). A long (case, size), one whose single call
lasts at least :data:`LONG_CALL_SAMPLES` minimum bursts, takes every other round. The ratio to SDPA is the
Hodges-Lehmann estimate of the per-round ratios.

Memory kept for the rounds: q, k, v and the layer input x of every timed size, ``4 * batch * heads * N *
head_dim`` elements, and the mixers. For the default run (28 mixers, sides 32, 48, 64 and the 8 x 8 grid, float32,
4 heads of 32 channels) that is about 15 MiB per mixer, 410 MiB in all, plus what the mixers' masks and plans add
to visattn's shared cache (about 14 MiB); the largest single call adds up to about 0.7 GB on top (a naive
``N x N`` mixer at 4,096 tokens, by its estimate), so the rounds peak near 1.1 GB, against a default memory budget of
half the RAM. The JSON's ``environment.schedule`` gives the estimate of each run.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._cache import cache_budget, cache_bytes, nbytes_of
from ..registry import list_mixers
from .budget import (
    estimate_memory_bytes,
    format_bytes,
    measured_time_skip_reason,
    memory_skip_reason,
    predict_memory_bytes,
    predicted_time_skip_reason,
    sdpa_memory_bytes,
)
from .case import BenchCase, build_mixer, mixer_kwargs, parse_case, preset_for
from .flops import attended_pairs, gflops_per_second, useful_flops
from .isolation import CaseProcesses, isolation_available
from .layout import Size, grid_for, infer_layout, nominal_tokens, resolve_shape
from .machine_state import StateProbe, state_summary
from .memory import peak_memory_bytes
from .prebuild import prebuild_native_kernels
from .record import BenchRecord, BenchReport
from .schedule import CASE_BY_CASE, BenchProgress, ScheduleLog, round_orders
from .settings import BenchSettings
from .timing import (
    Timing,
    calls_per_sample,
    hodges_lehmann_ratio,
    interleaved_bursts,
    summarize,
    synchronizer,
    time_call,
)

DEFAULT_SIZES: tuple[int, ...] = (32, 48, 64)
"""Default nominal sides: 1,024, 2,304 and 4,096 tokens, three sizes so that an exponent can be fitted with an
error, multiples of 8 so that the default windows and blocks fit. With 10 rounds of bursts of 0.05 s per side and a
2 s time budget, every registered mixer in under 3 minutes on two cores (docs/benchmarks.md gives the
measurements)."""

SKIPPABLE_ERRORS = (ValueError, NotImplementedError, MemoryError, torch.cuda.OutOfMemoryError)
"""Errors a call may raise that make a size skipped (with the message as reason) instead of stopping the run:
a grid the mechanism rejects, a mechanism not implemented for it, running out of memory."""

Call = Callable[[], None]

logger = logging.getLogger("visattn")

PROBE_CALLS = 3
"""At most this many timed probe calls of a (case, size) (:func:`_warm_up_and_probe`)."""

SETTLING_FRACTION = 0.1
"""A probe call longer than this fraction of the time budget is timed again: the first calls of a mixer with large
temporaries can still be growing the process's heap. On the 2-core VM, after ``hedgehog`` and ``hierarchical``,
``infsa`` at 4,096 tokens took 0.31, 1.48, 1.53 s in its first three calls (196,608 page faults and 2.6 s of system
time in the second, the heap growing from 2.1 to 3.1 GB) and 0.11 s from the fourth on, and three default runs
skipped it as over the 2 s budget."""

LONG_CALL_SAMPLES = 2
"""A (case, size) whose probe call of the mixer or of SDPA lasts at least this many ``min_sample_s`` is *long*: its
bursts are a single call each, already averaged over ``2 * min_sample_s`` or more, and it takes part in every other
round only (:data:`LONG_CALL_EVERY`). In the default run these are the naive ``N x N`` mixers at the larger sizes
(0.1-1.3 s per call), whose per-round ratios spread 3-9% where the fast memory-bound rows spread 10-35%; timing them
in all ten rounds would add about 18 s to the run."""

LONG_CALL_EVERY = 2
"""A long (case, size) is timed in rounds ``0, 2, 4, ...``: ``ceil(repeats / 2)`` samples, spread over the run."""

FIXED_COST_SIDE = 8
"""Nominal side of the tiny grid (64 tokens) each mixer is also timed on, in the same rounds as its sizes, for the
fixed cost of a call that :func:`~visattn.bench.fit.fit_exponent_above_fixed_cost` separates from the work: the
smallest side on which every default window, block and dilation fits."""


def default_cases() -> list[BenchCase]:
    """Every registered mixer with its default arguments (read from the registry when called)."""
    return [BenchCase(name) for name in list_mixers()]


@dataclass
class _Prepared:
    """A case ready to run: its mixer when one mixer serves every size (None when it is built per grid or could
    not be built), the arguments it was built with, why it could not be built, and its layout."""

    case: BenchCase
    mixer: Any
    kwargs: dict[str, Any]
    error: str | None
    layout: str
    per_grid: bool


def _create(case: BenchCase, settings: BenchSettings,
            shape: tuple[int, ...] | None = None) -> tuple[Any, dict[str, Any], str | None]:
    """The mixer, its arguments and None; or None, the arguments tried and why the mixer could not be built."""
    try:
        mixer, kwargs = build_mixer(case, settings.heads, settings.head_dim, shape)
    except (TypeError, ValueError, NotImplementedError) as err:
        kwargs = mixer_kwargs(case, settings.heads, settings.head_dim, shape)
        return None, kwargs, f"cannot create mixer: {type(err).__name__}: {err}"
    if isinstance(mixer, torch.nn.Module):
        mixer.to(device=settings.torch_device, dtype=settings.torch_dtype).eval()
    return mixer, kwargs, None


def _prepare(case: BenchCase, settings: BenchSettings) -> _Prepared:
    preset = preset_for(case.name)
    if preset.grid_kwargs is not None:
        kwargs = mixer_kwargs(case, settings.heads, settings.head_dim)
        return _Prepared(case, None, kwargs, None, preset.layout or "2d", per_grid=True)
    mixer, kwargs, error = _create(case, settings)
    layout = preset.layout or (infer_layout(mixer) if mixer is not None else "2d")
    return _Prepared(case, mixer, kwargs, error, layout, per_grid=False)


def _inputs(settings: BenchSettings, tokens: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standard-normal q, k, v ``(B, heads, N, head_dim)`` and a layer input x ``(B, N, heads * head_dim)`` (for
    mixers with ``uses_input``), seeded, requiring gradients when the backward pass is timed."""
    generator = torch.Generator().manual_seed(settings.seed)
    source = torch.float64 if settings.torch_dtype == torch.float64 else torch.float32
    b, h, d = settings.batch, settings.heads, settings.head_dim
    sizes = ((b, h, tokens, d),) * 3 + ((b, tokens, h * d),)
    return tuple(torch.randn(size, generator=generator, dtype=source)
                 .to(device=settings.torch_device, dtype=settings.torch_dtype).requires_grad_(settings.backward)
                 for size in sizes)


def _call(fn: Callable[[], Tensor], inputs: Sequence[Tensor], backward: bool) -> Call:
    """One forward (under ``no_grad``), or one forward and the gradients of ``out.sum()`` w.r.t. ``inputs``."""
    if not backward:
        def forward() -> None:
            with torch.no_grad():
                fn()

        return forward

    def forward_backward() -> None:
        torch.autograd.grad(fn().sum(), inputs, allow_unused=True)

    return forward_backward


def _calibrated(mixer: Any, shape: tuple[int, ...], inputs: Sequence[Tensor]) -> Any:
    """``mixer``, or where it needs calibration (``calibrate_qk``, e.g. PARO) a copy calibrated on these q, k: one
    calibration per grid, since every size's bursts run after all are probed."""
    if not callable(getattr(mixer, "calibrate_qk", None)):
        return mixer
    mixer = copy.deepcopy(mixer)
    mixer.calibrate_qk(inputs[0].detach(), inputs[1].detach(), shape)
    return mixer


def _mixer_call(mixer: Any, shape: tuple[int, ...], settings: BenchSettings, inputs: Sequence[Tensor]) -> Call:
    """The timed call of ``mixer`` on ``inputs`` (q, k, v and the layer input x, passed to mixers with
    ``uses_input``)."""
    q, k, v, x = inputs
    params = [p for p in mixer.parameters() if p.requires_grad] if isinstance(mixer, torch.nn.Module) else []
    if getattr(mixer, "uses_input", False):
        return _call(lambda: mixer(q, k, v, shape, x=x), (q, k, v, x, *params), settings.backward)
    return _call(lambda: mixer(q, k, v, shape), (q, k, v, *params), settings.backward)


def _input_bytes(settings: BenchSettings, tokens: int) -> int:
    """Bytes of the q, k, v and layer input x that one (case, size) keeps for its bursts (:func:`_inputs`)."""
    s = settings
    return 4 * s.batch * s.heads * s.head_dim * tokens * s.torch_dtype.itemsize


def _warm_up_and_probe(call: Call, sync: Call, warmup: int, budget_s: float) -> tuple[float | None, str | None]:
    """Make ``warmup`` untimed calls, then a probe call timed against ``budget_s``: its seconds and None, or
    None and why the size is skipped. A probe call longer than :data:`SETTLING_FRACTION` of the budget is timed
    again, up to :data:`PROBE_CALLS` calls, until one is within 10% of the one before, and the fastest counts."""
    try:
        for _ in range(warmup):
            call()
        seconds = time_call(call, sync)
        for _ in range(PROBE_CALLS - 1):
            if seconds <= SETTLING_FRACTION * budget_s:
                break
            again = time_call(call, sync)
            settled = again >= seconds / 1.1
            seconds = min(seconds, again)
            if settled:
                break
    except SKIPPABLE_ERRORS as err:
        return None, f"{type(err).__name__}: {err}"
    reason = measured_time_skip_reason(seconds, budget_s)
    return (None, reason) if reason else (seconds, None)


@dataclass
class _Ready:
    """A (case, size) that passed its checks and probes: its record, the calls to time (the mixer, then dense
    SDPA unless the baseline was skipped), how many consecutive calls make one burst of each, what the calls
    keep alive until they are timed (inputs and mixer), and every how many rounds it is timed (1, or
    :data:`LONG_CALL_EVERY` for a long one, :data:`LONG_CALL_SAMPLES`)."""

    record: BenchRecord
    calls: list[Call]
    counts: list[int]
    kept: tuple[Any, ...]
    every: int = 1


@dataclass(frozen=True)
class _BaselineProbe:
    """Dense SDPA's probe at one token count: seconds per call and peak memory (None when not measured). Every case
    times SDPA on q, k, v of the same shape at the same token count, so a run probes it once per token count
    (:func:`_probe_calls` with ``baselines``) instead of once per case, saving a warm-up, a probe and a profiled
    call of SDPA for every case after the first: a few seconds of the default run."""

    seconds: float
    peak_memory_bytes: int | None


def _probe(prepared: _Prepared, size: Size, settings: BenchSettings, history: list[tuple[int, float]],
           sdpa_history: list[tuple[int, float]], memory_history: list[tuple[int, int]], *,
           baselines: dict[int, _BaselineProbe] | None = None) -> tuple[BenchRecord, _Ready | None]:
    """The record of one (case, size) with its counts and estimates, and, unless a check skips the size, the
    calls ready to be timed (after warm-up, probe and the profiled call for peak memory; SDPA's from ``baselines``
    where its token count is there, :func:`_probe_calls`)."""
    s = settings
    shape = resolve_shape(size, prepared.layout)
    tokens = s.num_prefix_tokens + math.prod(shape)
    mixer, kwargs, error = prepared.mixer, prepared.kwargs, prepared.error
    if prepared.per_grid:
        mixer, kwargs, error = _create(prepared.case, s, shape)
    record = BenchRecord(prepared.case.name, prepared.case.label, kwargs, list(shape), tokens, s.num_prefix_tokens,
                         s.heads, s.head_dim, s.batch, s.dtype, s.device, s.backward, s.repeats,
                         skipped=error, sdpa_skipped="mixer not timed")
    if error is not None:
        return record, None
    try:
        pairs = attended_pairs(mixer, shape, s.num_prefix_tokens)
    except SKIPPABLE_ERRORS as err:
        record.skipped = f"{type(err).__name__}: {err}"
        return record, None
    if pairs is not None:
        record.attended_pairs = pairs
        record.density = pairs / (tokens * tokens)
        record.flops = useful_flops(pairs, s.heads, s.head_dim, s.batch, s.backward)
    itemsize = s.torch_dtype.itemsize
    record.estimated_memory_bytes = estimate_memory_bytes(mixer, s.batch, s.heads, tokens, s.head_dim, itemsize,
                                                          s.backward, pairs)
    predicted = predict_memory_bytes(memory_history, tokens)
    if predicted is not None:
        record.estimated_memory_bytes = min(record.estimated_memory_bytes, _input_bytes(s, tokens) + predicted)
    record.skipped = (memory_skip_reason(record.estimated_memory_bytes, s.memory_budget)
                      or predicted_time_skip_reason(history, tokens, s.time_budget_s))
    if record.skipped is not None:
        return record, None
    ready = _probe_calls(record, mixer, shape, s, history, sdpa_history, baselines)
    if ready is not None and record.peak_memory_bytes is not None:
        memory_history.append((tokens, record.peak_memory_bytes))
    return record, ready


def _probe_calls(record: BenchRecord, mixer: Any, shape: tuple[int, ...], settings: BenchSettings,
                 history: list[tuple[int, float]], sdpa_history: list[tuple[int, float]],
                 baselines: dict[int, _BaselineProbe] | None = None) -> _Ready | None:
    """Warm up and probe the mixer and dense SDPA on the same q, k, v (the baseline has its own budget checks;
    when it is skipped the mixer is still timed), size their bursts and measure their peak memory. Where
    ``baselines`` is given, SDPA's probe at a token count already in it is taken from there, and a new one is added
    to it."""
    s, tokens = settings, record.tokens
    q, k, v, x = _inputs(s, tokens)
    mixer = _calibrated(mixer, shape, (q, k, v, x))
    call = _mixer_call(mixer, shape, s, (q, k, v, x))
    sdpa = _call(lambda: F.scaled_dot_product_attention(q, k, v), (q, k, v), s.backward)
    sync = synchronizer(s.torch_device)

    seconds, record.skipped = _warm_up_and_probe(call, sync, s.warmup, s.time_budget_s)
    if record.skipped:
        return None
    history.append((tokens, seconds))
    sdpa_estimate = sdpa_memory_bytes(s.batch, s.heads, tokens, s.head_dim, s.torch_dtype.itemsize, s.backward)
    record.sdpa_skipped = (memory_skip_reason(sdpa_estimate, s.memory_budget)
                           or predicted_time_skip_reason(sdpa_history, tokens, s.time_budget_s))
    probes = [seconds]
    known = None if baselines is None else baselines.get(tokens)
    if known is not None:
        probes.append(known.seconds)
        record.sdpa_skipped, record.sdpa_peak_memory_bytes = None, known.peak_memory_bytes
    elif not record.sdpa_skipped:
        sdpa_seconds, record.sdpa_skipped = _warm_up_and_probe(sdpa, sync, s.warmup, s.time_budget_s)
        if sdpa_seconds is not None:
            probes.append(sdpa_seconds)
            sdpa_history.append((tokens, sdpa_seconds))
    if s.measure_memory:
        record.peak_memory_bytes = peak_memory_bytes(call, s.torch_device)
        if len(probes) == 2 and known is None:
            record.sdpa_peak_memory_bytes = peak_memory_bytes(sdpa, s.torch_device)
    if len(probes) == 2 and known is None and baselines is not None:
        baselines[tokens] = _BaselineProbe(probes[1], record.sdpa_peak_memory_bytes)
    calls = [call, sdpa][:len(probes)]
    long = 0 < s.min_sample_s * LONG_CALL_SAMPLES <= max(probes)
    return _Ready(record, calls, [calls_per_sample(p, s.min_sample_s) for p in probes], (q, k, v, x, mixer),
                  LONG_CALL_EVERY if long else 1)


def _store(record: BenchRecord, timing: Timing, calls: int, sdpa: bool) -> None:
    prefix = "sdpa_" if sdpa else ""
    for name in ("median_ms", "p25_ms", "p75_ms", "spread_ms", "relative_spread"):
        setattr(record, prefix + name, getattr(timing, name))
    setattr(record, prefix + "calls_per_sample", calls)
    setattr(record, prefix + "samples_ms", list(timing.samples_ms))
    if not sdpa:
        record.min_ms, record.max_ms = timing.min_ms, timing.max_ms


def _finish(ready: _Ready, samples: list[list[float]], settings: BenchSettings) -> None:
    """Fill the record's timings, GFLOP/s and ratio from its samples (the mixer's, then SDPA's when timed).

    The ratio is the Hodges-Lehmann estimate (:func:`~visattn.bench.timing.hodges_lehmann_ratio`) of the per-round
    ratios ``sdpa_i / mixer_i``: both bursts of a round ran seconds apart, so a change of machine speed between
    rounds cancels in each ratio instead of entering the medians. A record is noisy when the interquartile range
    of those ratios (of the mixer's samples without a baseline) exceeds ``spread_limit`` times their median."""
    record, s = ready.record, settings
    timing = summarize(samples[0])
    _store(record, timing, ready.counts[0], sdpa=False)
    if record.flops is not None:
        record.gflops = gflops_per_second(record.flops, timing.median_ms)
    if len(samples) == 1:
        record.noisy = timing.relative_spread > s.spread_limit
        return
    sdpa_timing = summarize(samples[1])
    _store(record, sdpa_timing, ready.counts[1], sdpa=True)
    per_round = [b / a for a, b in zip(samples[0], samples[1], strict=True)]
    ratios = summarize(per_round)
    record.ratio_to_sdpa = hodges_lehmann_ratio(per_round)
    record.ratio_p25, record.ratio_p75 = ratios.p25_ms, ratios.p75_ms
    record.ratio_relative_spread = ratios.relative_spread
    record.noisy = ratios.relative_spread > s.spread_limit
    dense_flops = useful_flops(record.tokens * record.tokens, s.heads, s.head_dim, s.batch, s.backward)
    record.sdpa_gflops = gflops_per_second(dense_flops, sdpa_timing.median_ms)


@dataclass
class _Fixed:
    """The mixer's call on the :data:`FIXED_COST_SIDE` grid: its tokens, the call, its burst length, what it keeps
    alive."""

    tokens: int
    call: Call
    count: int
    kept: tuple[Any, ...]


def _fixed_cost_call(prepared: _Prepared, settings: BenchSettings, smallest: int) -> _Fixed | None:
    """The call of the mixer on the :data:`FIXED_COST_SIDE` grid of its layout, ready to be timed in the case's
    rounds; None where that grid is not smaller than ``smallest`` (the case's smallest timed size) or the mixer
    cannot run on it. Its time is the fixed cost the exponent fit separates from the work
    (:func:`~visattn.bench.fit.fit_exponent_above_fixed_cost`)."""
    s = settings
    shape = grid_for(prepared.layout, FIXED_COST_SIDE)
    tokens = s.num_prefix_tokens + math.prod(shape)
    if tokens >= smallest:
        return None
    mixer, _, error = _create(prepared.case, s, shape) if prepared.per_grid else (prepared.mixer, None, None)
    if error is not None:
        return None
    inputs = _inputs(s, tokens)
    mixer = _calibrated(mixer, shape, inputs)
    call = _mixer_call(mixer, shape, s, inputs)
    seconds, skipped = _warm_up_and_probe(call, synchronizer(s.torch_device), s.warmup, s.time_budget_s)
    if skipped:
        return None
    return _Fixed(tokens, call, calls_per_sample(seconds, s.min_sample_s), (*inputs, mixer))


@dataclass
class _CaseRun:
    """A case after its probes: its records at every size (smallest first), the sizes ready to be timed, its
    fixed-cost call, the estimated bytes it keeps alive until timed (``held_bytes``: inputs, mixers and what its
    probes added to visattn's shared cache, :func:`visattn._cache.cache_bytes`), the largest estimated memory of
    one of its calls, the samples of its bursts so far (one list per call of :attr:`calls`) and the machine-state
    probe's sample at each of its visits (:mod:`visattn.bench.machine_state`; empty without a probe)."""

    records: list[BenchRecord]
    ready: list[_Ready]
    fixed: _Fixed | None
    held_bytes: int = 0
    cache_growth: int = 0
    largest_call_bytes: int = 0
    samples: list[list[float]] = field(default_factory=list)
    state_ms: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.records[0].label

    @property
    def calls(self) -> list[Call]:
        """Every burst of one round of the case, in order: each size's mixer and SDPA, then the fixed-cost call."""
        return [c for r in self.ready for c in r.calls] + ([self.fixed.call] if self.fixed else [])

    def in_round(self, index: int) -> list[int]:
        """The positions in :attr:`calls` of the bursts round ``index`` (from 0) takes: every size whose
        :attr:`_Ready.every` divides ``index`` (with both its calls), and the fixed-cost call."""
        taken, start = [], 0
        for r in self.ready:
            if index % r.every == 0:
                taken.extend(range(start, start + len(r.calls)))
            start += len(r.calls)
        return taken + ([start] if self.fixed else [])

    @property
    def counts(self) -> list[int]:
        return [c for r in self.ready for c in r.counts] + ([self.fixed.count] if self.fixed else [])


def _probe_case(prepared: _Prepared, sizes: Sequence[Size], settings: BenchSettings,
                history: list[tuple[int, float]], sdpa_history: list[tuple[int, float]],
                memory_history: list[tuple[int, int]], on_probe: Callable[[BenchRecord], None] | None = None, *,
                baselines: dict[int, _BaselineProbe] | None = None) -> _CaseRun:
    """Check and probe every size of the case (smallest first) and its fixed-cost call; ``on_probe`` sees each
    record (not timed yet) after its probe; ``baselines``: SDPA's probes of the run so far (:func:`_probe_calls`)."""
    before = cache_bytes()
    records, ready = [], []
    for size in sorted(sizes, key=nominal_tokens):
        record, timed = _probe(prepared, size, settings, history, sdpa_history, memory_history, baselines=baselines)
        records.append(record)
        if timed is not None:
            ready.append(timed)
        if on_probe is not None:
            on_probe(record)
    fixed = _fixed_cost_call(prepared, settings, min(r.record.tokens for r in ready)) if ready else None
    kept = [r.kept for r in ready] + ([fixed.kept] if fixed else [])
    growth = max(0, cache_bytes() - before)
    return _CaseRun(records, ready, fixed, nbytes_of(kept) + growth, growth,
                    max((r.record.estimated_memory_bytes or 0 for r in ready), default=0))


def _finish_case(run: _CaseRun, samples: list[list[float]], settings: BenchSettings) -> None:
    """Fill every timed record of the case from its samples (one list per call of ``run.calls``), the fixed cost
    included, and let go of the calls, inputs and mixers."""
    start = 0
    for r in run.ready:
        _finish(r, samples[start:start + len(r.calls)], settings)
        if run.state_ms:
            r.record.state_ms = run.state_ms[::r.every]
        start += len(r.calls)
    if run.fixed:
        fixed_ms = summarize(samples[-1]).median_ms
        for r in run.ready:
            r.record.fixed_cost_tokens, r.record.fixed_cost_ms = run.fixed.tokens, fixed_ms
    run.ready, run.fixed, run.samples, run.state_ms = [], None, [], []


def _time_alone(run: _CaseRun, settings: BenchSettings, state: StateProbe | None = None) -> None:
    """Case by case: the case's ``repeats`` rounds one after another (:func:`_visit`), so that a change of machine
    speed during the case reaches every size alike; then its records are complete."""
    if run.ready:
        for index in range(settings.repeats):
            _visit(run, settings, index, state)
        _finish_case(run, run.samples, settings)


def _visit(run: _CaseRun, settings: BenchSettings, index: int, state: StateProbe | None = None) -> bool:
    """Round ``index`` (from 0) of the case: one sample of the machine-state probe where there is one, then one
    burst of each call the round takes (:meth:`_CaseRun.in_round`), interleaved (:func:`interleaved_bursts`) and
    appended to their samples; whether visattn's shared cache changed size meanwhile (something was rebuilt inside
    a timed burst)."""
    if state is not None:
        run.state_ms.append(state.sample())
    before = cache_bytes()
    calls, counts, taken = run.calls, run.counts, run.in_round(index)
    got = interleaved_bursts([calls[i] for i in taken], [counts[i] for i in taken], 1,
                             synchronizer(settings.torch_device))
    if not run.samples:
        run.samples = [[] for _ in calls]
    for i, new in zip(taken, got, strict=True):
        run.samples[i].extend(new)
    return cache_bytes() != before


def _measure_sizes(prepared: _Prepared, sizes: Sequence[Size], settings: BenchSettings,
                   history: list[tuple[int, float]], sdpa_history: list[tuple[int, float]],
                   memory_history: list[tuple[int, int]],
                   on_probe: Callable[[BenchRecord], None] | None = None, *,
                   baselines: dict[int, _BaselineProbe] | None = None,
                   state: StateProbe | None = None) -> list[BenchRecord]:
    """The records of one case at every size (smallest first), timed case by case: every size is checked and
    probed first (``on_probe`` sees each record after its probe), then the bursts of all sizes and their baselines
    are taken in the same rounds."""
    run = _probe_case(prepared, sizes, settings, history, sdpa_history, memory_history, on_probe,
                      baselines=baselines)
    _time_alone(run, settings, state)
    return run.records


def _measure(prepared: _Prepared, size: Size, settings: BenchSettings, history: list[tuple[int, float]],
             sdpa_history: list[tuple[int, float]], memory_history: list[tuple[int, int]]) -> BenchRecord:
    """The record of one (case, size) (:func:`_measure_sizes` with one size)."""
    (record,) = _measure_sizes(prepared, [size], settings, history, sdpa_history, memory_history)
    return record


def predicted_held_bytes(prepared: _Prepared, sizes: Sequence[Size], settings: BenchSettings) -> int:
    """What a case is expected to keep alive from its probes to the end of its rounds, before it runs: q, k, v and
    x at every size and on the fixed-cost grid, and its mixer's tensors (one per size for a mixer built per grid is
    not known yet and counted after the probes)."""
    s = settings
    shapes = [resolve_shape(size, prepared.layout) for size in sizes] + [grid_for(prepared.layout, FIXED_COST_SIDE)]
    inputs = sum(_input_bytes(s, s.num_prefix_tokens + math.prod(shape)) for shape in shapes)
    return inputs + nbytes_of(prepared.mixer)


def _as_case(case: BenchCase | str) -> BenchCase:
    if isinstance(case, BenchCase):
        return case
    if isinstance(case, str):
        return parse_case(case)
    raise TypeError(f"cases must hold BenchCase objects or strings like 'name:key=value', got {case!r}")


class _Steps:
    """Counts the steps of a run (one per (case, size) probed, one per case and round timed) for ``on_progress``."""

    def __init__(self, total: int, on_progress: Callable[[BenchProgress], None] | None) -> None:
        self.done, self.total, self._on_progress = 0, total, on_progress

    def advance(self, steps: int, description: str) -> None:
        self.done += steps
        if self._on_progress is not None and steps:
            self._on_progress(BenchProgress(self.done, self.total, description))

    def probed(self, record: BenchRecord) -> None:
        self.advance(1, f"probe {record.label} {'x'.join(map(str, record.shape))}")


def _time_in_rounds(group: list[_CaseRun], settings: BenchSettings, log: ScheduleLog, steps: _Steps,
                    state: StateProbe | None = None) -> None:
    """Rounds across the cases of ``group``: round ``r`` visits every case with something to time (one burst of each
    of its calls) in a seeded order of its own (:func:`~visattn.bench.schedule.round_orders`) before round
    ``r + 1`` starts; then every record of the group is complete."""
    timed = [run for run in group if run.ready]
    orders = round_orders(len(timed), settings.repeats, settings.seed + len(log.groups))
    log.groups.append([run.label for run in timed])
    held, largest = _group_memory(group)
    log.held_bytes.append(held)
    log.largest_call_bytes.append(largest)
    log.round_orders.append([[timed[i].label for i in order] for order in orders])
    steps.advance(settings.repeats * (len(group) - len(timed)), "cases with nothing to time")
    for r, order in enumerate(orders, 1):
        for i in order:
            log.cache_changes += _visit(timed[i], settings, r - 1, state)
            steps.advance(1, f"round {r}/{settings.repeats} {timed[i].label}")
    for run in timed:
        _finish_case(run, run.samples, settings)


def _group_memory(group: list[_CaseRun]) -> tuple[int, int]:
    """The bytes the cases of ``group`` keep for their rounds, and the largest estimate of one of their calls."""
    return sum(run.held_bytes for run in group), max((run.largest_call_bytes for run in group), default=0)


def _over_budget(held: int, largest_call: int, settings: BenchSettings) -> bool:
    return held + largest_call > settings.memory_budget


def _in_process(cases: Sequence[BenchCase], sizes: Sequence[Size], settings: BenchSettings, log: ScheduleLog,
                steps: _Steps) -> Iterator[BenchRecord]:
    """Every case in this process: probed in order and gathered for rounds across cases while the memory kept for
    the rounds plus the largest call fits ``settings.memory_budget`` (and what the cases added to visattn's shared
    cache stays within half its budget, so that no entry is dropped and rebuilt inside a timed burst); a group that
    would not fit is timed in rounds among its cases and let go before the next case is probed. Records come out in
    case order once their group's rounds are done. With ``rounds_across_cases=False``, each case is timed right
    after its probes."""
    sdpa_history: list[tuple[int, float]] = []
    baselines: dict[int, _BaselineProbe] = {}
    state = StateProbe.create(settings.torch_device)
    log.state_probe_ms = state.samples_ms
    group: list[_CaseRun] = []
    causes: set[str] = set()

    def flush() -> Iterator[BenchRecord]:
        _time_in_rounds(group, settings, log, steps, state)
        records = [record for run in group for record in run.records]
        group.clear()
        return iter(records)

    for case in cases:
        prepared = _prepare(case, settings)
        if not settings.rounds_across_cases:
            records = _measure_sizes(prepared, sizes, settings, [], sdpa_history, [], steps.probed,
                                     baselines=baselines, state=state)
            steps.advance(settings.repeats, f"timed {records[0].label}")
            yield from records
            continue
        memory = f"the memory budget {format_bytes(settings.memory_budget)}"
        held, largest = _group_memory(group)
        if group and _over_budget(held + predicted_held_bytes(prepared, sizes, settings), largest, settings):
            causes.add(memory)
            yield from flush()
        group.append(_probe_case(prepared, sizes, settings, [], sdpa_history, [], steps.probed, baselines=baselines))
        cache = sum(r.cache_growth for r in group) > cache_budget() // 2
        if len(group) > 1 and (_over_budget(*_group_memory(group), settings) or cache):
            causes.add(f"half of visattn's cache budget {format_bytes(cache_budget())}" if cache else memory)
            yield from flush()
    if group:
        yield from flush()
    if causes:
        log.reason = (f"the estimated memory of rounds across all cases exceeds {' and '.join(sorted(causes))}: "
                      f"timed in {len(log.groups)} groups")
        if all(len(labels) <= 1 for labels in log.groups):
            log.scheduling = CASE_BY_CASE
    if log.cache_changes:
        logger.warning("visattn.bench: visattn's shared cache changed size during %d timed case visits; those "
                       "bursts include rebuilt masks or plans", log.cache_changes)


def iter_bench(cases: Iterable[BenchCase | str] | None = None, sizes: Iterable[Size] | None = None,
               settings: BenchSettings | None = None, *, schedule: ScheduleLog | None = None,
               on_progress: Callable[[BenchProgress], None] | None = None) -> Iterator[BenchRecord]:
    """Yield one :class:`BenchRecord` per (case, size), in case order, sizes smallest first, each once it is
    complete: with rounds across cases (the default, :mod:`visattn.bench.schedule`) every record comes after the
    last round of its group (for a run within the memory budget: at the end of the run); case by case, a case's
    records come after its own rounds.

    Args:
        cases: :class:`BenchCase` objects or strings ``"name"`` / ``"name:key=value,..."``; every registered
            mixer by default.
        sizes: int sides (``s * s`` tokens in each mixer's layout, see :mod:`visattn.bench.layout`) or grid
            shapes; :data:`DEFAULT_SIZES` by default.
        settings: :class:`BenchSettings`; the defaults when None. ``settings.rounds_across_cases=False`` times each
            case right after its probes. With ``settings.isolate`` each case runs in its own fresh process
            (:mod:`visattn.bench.isolation`) where that is available, case by case.
        schedule: a fresh :class:`~visattn.bench.schedule.ScheduleLog` to fill in with the scheduling used.
        on_progress: called with a :class:`~visattn.bench.schedule.BenchProgress` after every step (each (case,
            size) probed, each case's burst of each round).
    """
    settings = BenchSettings() if settings is None else settings
    if not isinstance(settings, BenchSettings):
        raise TypeError(f"settings must be a BenchSettings, got {type(settings).__name__}")
    cases = default_cases() if cases is None else [_as_case(c) for c in cases]
    sizes = list(DEFAULT_SIZES if sizes is None else sizes)
    if not cases:
        raise ValueError("cases must name at least one mixer, got none")
    if not sizes:
        raise ValueError("sizes must hold at least one size, got none")
    for size in sizes:
        resolve_shape(size, "2d")
    log = ScheduleLog() if schedule is None else schedule
    steps = _Steps(len(cases) * (len(sizes) + settings.repeats), on_progress)
    if settings.torch_device.type == "cpu":
        prebuild_native_kernels()
    if settings.isolate and isolation_available(settings):
        log.scheduling, log.reason = CASE_BY_CASE, "isolate: each case in its own process"
        sdpa_history: list[tuple[int, float]] = []
        with CaseProcesses() as processes:
            for case in cases:
                records, sdpa_history = processes.measure(case, sizes, settings, sdpa_history)
                steps.advance(len(sizes) + settings.repeats, f"timed {case.label} in its own process")
                yield from records
        return
    if not settings.rounds_across_cases:
        log.scheduling, log.reason = CASE_BY_CASE, "rounds_across_cases is off"
    yield from _in_process(cases, sizes, settings, log, steps)


def measure_case(case: BenchCase, sizes: Sequence[Size], settings: BenchSettings,
                 sdpa_history: list[tuple[int, float]]) -> list[BenchRecord]:
    """The records of one case at every size (smallest first), in this process, case by case; ``sdpa_history``
    (token count, seconds of dense SDPA's probe) grows with the baselines timed, and predicts the baseline's time
    budget."""
    return _measure_sizes(_prepare(case, settings), sizes, settings, [], sdpa_history, [])


def attach_schedule(report: BenchReport, log: ScheduleLog) -> None:
    """Put what a run's :class:`ScheduleLog` recorded into ``report.env``: ``"schedule"`` (how the bursts were
    scheduled) and ``"machine_state"`` (:func:`~visattn.bench.machine_state.state_summary` of the probe's
    samples)."""
    report.env["schedule"] = log.to_dict()
    report.env["machine_state"] = state_summary(log.state_probe_ms)


def run_bench(cases: Iterable[BenchCase | str] | None = None, sizes: Iterable[Size] | None = None,
              settings: BenchSettings | None = None, on_record: Callable[[BenchRecord], None] | None = None,
              on_progress: Callable[[BenchProgress], None] | None = None) -> BenchReport:
    """Run :func:`iter_bench` to the end; the report's environment holds the scheduling used (``"schedule"``).

    ``on_record`` sees each record once it is complete (:func:`iter_bench`: with rounds across cases, all at the end
    of the rounds), ``on_progress`` each step as it is done (progress bars)."""
    settings = BenchSettings() if settings is None else settings
    report = BenchReport(settings)
    log = ScheduleLog()
    for record in iter_bench(cases, sizes, settings, schedule=log, on_progress=on_progress):
        report.records.append(record)
        if on_record is not None:
            on_record(record)
    attach_schedule(report, log)
    return report
