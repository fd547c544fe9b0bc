"""Results of a benchmark run: one :class:`BenchRecord` per (mixer, size), and the :class:`BenchReport` with
the fitted scaling exponents (reported only where the fit is sound, see :mod:`visattn.bench.fit`), written to
JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .fit import MAX_FIT_ERROR, MIN_FIT_POINTS, ExponentFit, fit_exponent_above_fixed_cost, fit_exponent_with_error
from .load import load_average
from .settings import BenchSettings


@dataclass
class BenchRecord:
    """One (mixer, size). Times in milliseconds per call (median and quartiles over ``repeats`` samples, each a
    burst of ``calls_per_sample`` consecutive calls, raw in ``samples_ms``); ``spread_ms`` is ``p75_ms - p25_ms``
    and ``relative_spread`` is ``spread_ms / median_ms`` (``sdpa_`` fields: the same for the baseline). ``noisy`` is
    True when the relative spread of the ratio (of the mixer's samples when the baseline was not timed) exceeds the
    settings' ``spread_limit`` (None when the mixer was not timed). ``density = attended_pairs / tokens^2``;
    ``gflops`` is useful GFLOP/s (:mod:`visattn.bench.flops`); ``ratio_to_sdpa`` is the Hodges-Lehmann estimate
    (:func:`~visattn.bench.timing.hodges_lehmann_ratio`) over rounds of ``sdpa_ms / mixer_ms`` of the two bursts of
    each round (> 1: faster than dense SDPA on the same q, k, v, measured alternately in the same run),
    ``ratio_p25``/``ratio_p75`` the quartiles of those per-round ratios and ``ratio_relative_spread`` their distance
    over their median. ``peak_memory_bytes`` is what the call allocates (:mod:`visattn.bench.memory`),
    ``estimated_memory_bytes`` the estimate, inputs included, that the memory budget is checked against. ``skipped``
    holds the reason the mixer was not timed (``sdpa_skipped`` for the baseline), None when it was; the measurements
    of a skipped side are None. ``fixed_cost_ms`` is the mixer's median time on the tiny grid of
    ``fixed_cost_tokens`` tokens timed in the same rounds (the same for every size of the case; None where it was not
    timed), which the exponent fit separates from the work. ``state_ms`` holds the machine-state probe's sample
    taken at the start of each visit in which the record was timed, one per sample of ``samples_ms``
    (:mod:`visattn.bench.machine_state`; None where no probe ran).
    """

    mixer: str
    label: str
    kwargs: dict[str, Any]
    shape: list[int]
    tokens: int
    num_prefix_tokens: int
    heads: int
    head_dim: int
    batch: int
    dtype: str
    device: str
    backward: bool
    repeats: int
    attended_pairs: int | None = None
    density: float | None = None
    flops: int | None = None
    estimated_memory_bytes: int | None = None
    median_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    spread_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    relative_spread: float | None = None
    calls_per_sample: int | None = None
    samples_ms: list[float] | None = None
    gflops: float | None = None
    peak_memory_bytes: int | None = None
    sdpa_median_ms: float | None = None
    sdpa_p25_ms: float | None = None
    sdpa_p75_ms: float | None = None
    sdpa_spread_ms: float | None = None
    sdpa_relative_spread: float | None = None
    sdpa_calls_per_sample: int | None = None
    sdpa_samples_ms: list[float] | None = None
    sdpa_gflops: float | None = None
    sdpa_peak_memory_bytes: int | None = None
    ratio_to_sdpa: float | None = None
    ratio_p25: float | None = None
    ratio_p75: float | None = None
    ratio_relative_spread: float | None = None
    noisy: bool | None = None
    fixed_cost_ms: float | None = None
    fixed_cost_tokens: int | None = None
    skipped: str | None = None
    sdpa_skipped: str | None = None
    state_ms: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _timed_by_label(records: list[BenchRecord]) -> dict[str, list[BenchRecord]]:
    return {label: [r for r in records if r.label == label and r.median_ms is not None]
            for label in dict.fromkeys(r.label for r in records)}


def log_log_fits(records: list[BenchRecord]) -> dict[str, ExponentFit | None]:
    """Per mixer label: the plain log-log fit of ``median_ms`` against ``tokens`` over its timed sizes (None below
    two), fixed cost included."""
    return {label: fit_exponent_with_error([r.tokens for r in timed], [r.median_ms for r in timed]) if timed else None
            for label, timed in _timed_by_label(records).items()}


def exponent_fits(records: list[BenchRecord]) -> dict[str, ExponentFit | None]:
    """Per mixer label: the exponent of the work above the fixed cost of a call
    (:func:`~visattn.bench.fit.fit_exponent_above_fixed_cost`) where the case timed its fixed cost and that fit
    exists, else the plain log-log fit (:func:`log_log_fits`)."""
    out = log_log_fits(records)
    for label, timed in _timed_by_label(records).items():
        fixed = {(r.fixed_cost_tokens, r.fixed_cost_ms) for r in timed}
        if len(fixed) == 1 and None not in (point := fixed.pop()):
            above = fit_exponent_above_fixed_cost([r.tokens for r in timed], [r.median_ms for r in timed], *point)
            out[label] = above if above is not None else out[label]
    return out


def _sound(fit: ExponentFit | None) -> float | None:
    return fit.alpha if fit is not None and fit.sound() else None


def exponents_by_label(records: list[BenchRecord]) -> dict[str, float | None]:
    """Per mixer label: the fitted exponent where the fit is sound (:meth:`ExponentFit.sound`), else None."""
    return {label: _sound(fit) for label, fit in exponent_fits(records).items()}


def sdpa_times(records: list[BenchRecord]) -> dict[int, float]:
    """Dense SDPA's time per token count: the median over every record that timed it at that count."""
    by_tokens: dict[int, list[float]] = {}
    for r in records:
        if r.sdpa_median_ms is not None:
            by_tokens.setdefault(r.tokens, []).append(r.sdpa_median_ms)
    return {n: statistics.median(ts) for n, ts in sorted(by_tokens.items())}


def sdpa_exponent_fit(records: list[BenchRecord]) -> ExponentFit | None:
    """The fit of dense SDPA's time against tokens."""
    times = sdpa_times(records)
    return fit_exponent_with_error(list(times), list(times.values())) if times else None


def sdpa_exponent(records: list[BenchRecord]) -> float | None:
    """The fitted exponent of dense SDPA's time against tokens where the fit is sound, else None."""
    return _sound(sdpa_exponent_fit(records))


def _fit_dict(fit: ExponentFit | None) -> dict[str, Any] | None:
    if fit is None:
        return None
    return {"alpha": fit.alpha, "stderr": fit.stderr, "points": fit.points, "sound": fit.sound(),
            "fixed_ms": fit.fixed_ms, "fixed_tokens": fit.fixed_tokens}


def environment() -> dict[str, Any]:
    """Versions, threads and the load average (1, 5, 15 min) at the start, so that a JSON file says where and on
    how busy a machine it was measured."""
    from .. import __version__
    from .allocator import allocator_state

    return {
        "visattn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "allocator": allocator_state(),
    }


@dataclass
class BenchReport:
    """A whole run: settings, records in the order measured, and where it ran."""

    settings: BenchSettings
    records: list[BenchRecord] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=environment)

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.env,
            "settings": self.settings.to_dict(),
            "records": [r.to_dict() for r in self.records],
            "exponents": exponents_by_label(self.records),
            "sdpa_exponent": sdpa_exponent(self.records),
            "exponent_fits": {k: _fit_dict(v) for k, v in exponent_fits(self.records).items()},
            "log_log_exponent_fits": {k: _fit_dict(v) for k, v in log_log_fits(self.records).items()},
            "sdpa_exponent_fit": _fit_dict(sdpa_exponent_fit(self.records)),
            "fit_rule": {"min_points": MIN_FIT_POINTS, "max_stderr": MAX_FIT_ERROR},
            "noisy_records": sum(bool(r.noisy) for r in self.records),
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as indented JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
