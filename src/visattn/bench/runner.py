"""Run the benchmark: every mixer at every size, timed against dense SDPA on the same q, k, v in the same run.

Before anything is timed, every native kernel library is built (:mod:`visattn.bench.prebuild`), so that no build
counts against a budget or a time. The cases run one after another; for each, its sizes are prepared smallest
first (so each size's time can be predicted from the smaller ones): count the attended pairs, estimate the memory,
skip if a budget would be exceeded, make q, k, v, make ``warmup`` untimed calls (one-time set-up), one probe call
of the mixer and one of dense ``scaled_dot_product_attention`` (no mask) timed against the time budget, and one
profiled call of each for peak memory. Then ``repeats`` rounds: in each, one burst of the mixer and one of SDPA at
every size, so that every size and its baseline see the same machine, and one burst of the mixer on a tiny grid
(:data:`FIXED_COST_SIDE`) for the fixed cost of a call. Each burst lasts at least ``min_sample_s`` (sized by the
probe call). The ratio to SDPA is the median of the per-round ratios.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import list_mixers
from .budget import (
    estimate_memory_bytes,
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
from .memory import peak_memory_bytes
from .prebuild import prebuild_native_kernels
from .record import BenchRecord, BenchReport
from .settings import BenchSettings
from .timing import Timing, calls_per_sample, interleaved_bursts, summarize, synchronizer, time_call

DEFAULT_SIZES: tuple[int, ...] = (32, 48, 64)
"""Default nominal sides: 1,024, 2,304 and 4,096 tokens, three sizes so that an exponent can be fitted with an
error, multiples of 8 so that the default windows and blocks fit. With 5 bursts of 0.1 s per side and a 2 s time
budget, every registered mixer in about 3 minutes on two cores (docs/benchmarks.md gives the measurements)."""

SKIPPABLE_ERRORS = (ValueError, NotImplementedError, MemoryError, torch.cuda.OutOfMemoryError)
"""Errors a call may raise that make a size skipped (with the message as reason) instead of stopping the run:
a grid the mechanism rejects, a mechanism not implemented for it, running out of memory."""

Call = Callable[[], None]

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


def _mixer_call(mixer: Any, shape: tuple[int, ...], settings: BenchSettings, inputs: Sequence[Tensor]) -> Call:
    """The timed call of ``mixer`` on ``inputs`` (q, k, v and the layer input x, passed to mixers with
    ``uses_input``). A mixer that needs calibration (``calibrate_qk``, e.g. PARO) is calibrated on these q, k first,
    as a copy: one calibration per grid, since every size's bursts run after all are probed."""
    q, k, v, x = inputs
    params = [p for p in mixer.parameters() if p.requires_grad] if isinstance(mixer, torch.nn.Module) else []
    if callable(getattr(mixer, "calibrate_qk", None)):
        mixer = copy.deepcopy(mixer)
        mixer.calibrate_qk(q.detach(), k.detach(), shape)
    if getattr(mixer, "uses_input", False):
        return _call(lambda: mixer(q, k, v, shape, x=x), (q, k, v, x, *params), settings.backward)
    return _call(lambda: mixer(q, k, v, shape), (q, k, v, *params), settings.backward)


def _warm_up_and_probe(call: Call, sync: Call, warmup: int, budget_s: float) -> tuple[float | None, str | None]:
    """Make ``warmup`` untimed calls, then one probe call timed against ``budget_s``: its seconds and None, or
    None and why the size is skipped."""
    try:
        for _ in range(warmup):
            call()
        seconds = time_call(call, sync)
    except SKIPPABLE_ERRORS as err:
        return None, f"{type(err).__name__}: {err}"
    reason = measured_time_skip_reason(seconds, budget_s)
    return (None, reason) if reason else (seconds, None)


@dataclass
class _Ready:
    """A (case, size) that passed its checks and probes: its record, the calls to time (the mixer, then dense
    SDPA unless the baseline was skipped) and how many consecutive calls make one burst of each."""

    record: BenchRecord
    calls: list[Call]
    counts: list[int]


def _probe(prepared: _Prepared, size: Size, settings: BenchSettings, history: list[tuple[int, float]],
           sdpa_history: list[tuple[int, float]], memory_history: list[tuple[int, int]]) -> tuple[BenchRecord,
                                                                                                   _Ready | None]:
    """The record of one (case, size) with its counts and estimates, and, unless a check skips the size, the
    calls ready to be timed (after warm-up, probe and the profiled call for peak memory)."""
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
        inputs = (3 * s.heads * s.head_dim + s.heads * s.head_dim) * s.batch * tokens * itemsize
        record.estimated_memory_bytes = min(record.estimated_memory_bytes, inputs + predicted)
    record.skipped = (memory_skip_reason(record.estimated_memory_bytes, s.memory_budget)
                      or predicted_time_skip_reason(history, tokens, s.time_budget_s))
    if record.skipped is not None:
        return record, None
    ready = _probe_calls(record, mixer, shape, s, history, sdpa_history)
    if ready is not None and record.peak_memory_bytes is not None:
        memory_history.append((tokens, record.peak_memory_bytes))
    return record, ready


def _probe_calls(record: BenchRecord, mixer: Any, shape: tuple[int, ...], settings: BenchSettings,
                 history: list[tuple[int, float]], sdpa_history: list[tuple[int, float]]) -> _Ready | None:
    """Warm up and probe the mixer and dense SDPA on the same q, k, v (the baseline has its own budget checks;
    when it is skipped the mixer is still timed), size their bursts and measure their peak memory."""
    s, tokens = settings, record.tokens
    q, k, v, x = _inputs(s, tokens)
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
    if not record.sdpa_skipped:
        sdpa_seconds, record.sdpa_skipped = _warm_up_and_probe(sdpa, sync, s.warmup, s.time_budget_s)
        if sdpa_seconds is not None:
            probes.append(sdpa_seconds)
            sdpa_history.append((tokens, sdpa_seconds))
    if s.measure_memory:
        record.peak_memory_bytes = peak_memory_bytes(call, s.torch_device)
        if len(probes) == 2:
            record.sdpa_peak_memory_bytes = peak_memory_bytes(sdpa, s.torch_device)
    calls = [call, sdpa][:len(probes)]
    return _Ready(record, calls, [calls_per_sample(p, s.min_sample_s) for p in probes])


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

    The ratio is the median of the per-round ratios ``sdpa_i / mixer_i``: both bursts of a round ran seconds
    apart, so a change of machine speed between rounds cancels in each ratio instead of entering the medians. A
    record is noisy when the interquartile range of those ratios (of the mixer's samples without a baseline)
    exceeds ``spread_limit`` times their median."""
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
    ratios = summarize([b / a for a, b in zip(samples[0], samples[1], strict=True)])
    record.ratio_to_sdpa, record.ratio_p25, record.ratio_p75 = ratios.median_ms, ratios.p25_ms, ratios.p75_ms
    record.ratio_relative_spread = ratios.relative_spread
    record.noisy = ratios.relative_spread > s.spread_limit
    dense_flops = useful_flops(record.tokens * record.tokens, s.heads, s.head_dim, s.batch, s.backward)
    record.sdpa_gflops = gflops_per_second(dense_flops, sdpa_timing.median_ms)


def _measure_sizes(prepared: _Prepared, sizes: Sequence[Size], settings: BenchSettings,
                   history: list[tuple[int, float]], sdpa_history: list[tuple[int, float]],
                   memory_history: list[tuple[int, int]]) -> list[BenchRecord]:
    """The records of one case at every size (smallest first). Every size is checked and probed first, then the
    bursts of all sizes and their baselines are taken in the same rounds (:func:`interleaved_bursts`): a change of
    machine speed during the case then reaches every size alike, and the fitted exponent compares like with like.
    """
    records, ready = [], []
    for size in sorted(sizes, key=nominal_tokens):
        record, timed = _probe(prepared, size, settings, history, sdpa_history, memory_history)
        records.append(record)
        if timed is not None:
            ready.append(timed)
    if ready:
        fixed = _fixed_cost_call(prepared, settings, min(r.record.tokens for r in ready))
        fns = [call for r in ready for call in r.calls] + ([fixed[1]] if fixed else [])
        counts = [count for r in ready for count in r.counts] + ([fixed[2]] if fixed else [])
        samples = interleaved_bursts(fns, counts, settings.repeats, synchronizer(settings.torch_device))
        start = 0
        for r in ready:
            _finish(r, samples[start:start + len(r.calls)], settings)
            start += len(r.calls)
        if fixed:
            fixed_ms = summarize(samples[-1]).median_ms
            for r in ready:
                r.record.fixed_cost_tokens, r.record.fixed_cost_ms = fixed[0], fixed_ms
    return records


def _fixed_cost_call(prepared: _Prepared, settings: BenchSettings, smallest: int) -> tuple[int, Call, int] | None:
    """The call of the mixer on the :data:`FIXED_COST_SIDE` grid of its layout, ready to be timed in the case's
    rounds: its tokens, the call and its burst length; None where that grid is not smaller than ``smallest`` (the
    case's smallest timed size) or the mixer cannot run on it. Its time is the fixed cost the exponent fit separates
    from the work (:func:`~visattn.bench.fit.fit_exponent_above_fixed_cost`)."""
    s = settings
    shape = grid_for(prepared.layout, FIXED_COST_SIDE)
    tokens = s.num_prefix_tokens + math.prod(shape)
    if tokens >= smallest:
        return None
    mixer, _, error = _create(prepared.case, s, shape) if prepared.per_grid else (prepared.mixer, None, None)
    if error is not None:
        return None
    call = _mixer_call(mixer, shape, s, _inputs(s, tokens))
    seconds, skipped = _warm_up_and_probe(call, synchronizer(s.torch_device), s.warmup, s.time_budget_s)
    if skipped:
        return None
    return tokens, call, calls_per_sample(seconds, s.min_sample_s)


def _measure(prepared: _Prepared, size: Size, settings: BenchSettings, history: list[tuple[int, float]],
             sdpa_history: list[tuple[int, float]], memory_history: list[tuple[int, int]]) -> BenchRecord:
    """The record of one (case, size) (:func:`_measure_sizes` with one size)."""
    (record,) = _measure_sizes(prepared, [size], settings, history, sdpa_history, memory_history)
    return record


def _as_case(case: BenchCase | str) -> BenchCase:
    if isinstance(case, BenchCase):
        return case
    if isinstance(case, str):
        return parse_case(case)
    raise TypeError(f"cases must hold BenchCase objects or strings like 'name:key=value', got {case!r}")


def iter_bench(cases: Iterable[BenchCase | str] | None = None, sizes: Iterable[Size] | None = None,
               settings: BenchSettings | None = None) -> Iterator[BenchRecord]:
    """Yield one :class:`BenchRecord` per (case, size) as it is measured, sizes smallest first.

    Args:
        cases: :class:`BenchCase` objects or strings ``"name"`` / ``"name:key=value,..."``; every registered
            mixer by default.
        sizes: int sides (``s * s`` tokens in each mixer's layout, see :mod:`visattn.bench.layout`) or grid
            shapes; :data:`DEFAULT_SIZES` by default.
        settings: :class:`BenchSettings`; the defaults when None. With ``settings.isolate`` each case runs in its
            own fresh process (:mod:`visattn.bench.isolation`) where that is available.
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
    if settings.torch_device.type == "cpu":
        prebuild_native_kernels()
    sdpa_history: list[tuple[int, float]] = []
    if settings.isolate and isolation_available(settings):
        with CaseProcesses() as processes:
            for case in cases:
                records, sdpa_history = processes.measure(case, sizes, settings, sdpa_history)
                yield from records
        return
    for case in cases:
        yield from measure_case(case, sizes, settings, sdpa_history)


def measure_case(case: BenchCase, sizes: Sequence[Size], settings: BenchSettings,
                 sdpa_history: list[tuple[int, float]]) -> list[BenchRecord]:
    """The records of one case at every size (smallest first), in this process; ``sdpa_history`` (token count,
    seconds of dense SDPA's probe) grows with the baselines timed, and predicts the baseline's time budget."""
    return _measure_sizes(_prepare(case, settings), sizes, settings, [], sdpa_history, [])


def run_bench(cases: Iterable[BenchCase | str] | None = None, sizes: Iterable[Size] | None = None,
              settings: BenchSettings | None = None,
              on_record: Callable[[BenchRecord], None] | None = None) -> BenchReport:
    """Run :func:`iter_bench` to the end; ``on_record`` sees each record as it comes (progress bars)."""
    settings = BenchSettings() if settings is None else settings
    report = BenchReport(settings)
    for record in iter_bench(cases, sizes, settings):
        report.records.append(record)
        if on_record is not None:
            on_record(record)
    return report
