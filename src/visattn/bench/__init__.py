"""Timing and memory harness behind ``visattn bench``: every mixer at several sizes, against dense SDPA.

>>> from visattn.bench import BenchSettings, run_bench
>>> report = run_bench(["softmax", "neighborhood:kernel_size=5"], sizes=[16, 24], settings=BenchSettings())
>>> report.write_json("bench.json")

Each record holds median time and spread (samples are bursts of calls of at least 0.1 s), peak memory, attended
pairs, useful GFLOP/s and the ratio to dense SDPA measured interleaved in the same run, flagged when the spread
exceeds a quarter of the median; the report adds the fitted scaling exponent per mixer where the fit is sound.
"""

from .budget import estimate_memory_bytes, format_bytes, parse_bytes
from .case import BENCH_PRESETS, BenchCase, build_mixer, parse_case
from .fit import (
    MAX_FIT_ERROR,
    MIN_FIT_POINTS,
    ExponentFit,
    fit_exponent,
    fit_exponent_above_fixed_cost,
    fit_exponent_with_error,
)
from .flops import attended_pairs, gflops_per_second, useful_flops
from .layout import grid_for, infer_layout, parse_size, resolve_shape
from .load import busy_message, load_average
from .machine_state import StateProbe, state_note, state_summary
from .memory import peak_memory_bytes
from .plot import plot_report
from .prebuild import prebuild_native_kernels
from .record import BenchRecord, BenchReport
from .runner import DEFAULT_SIZES, attach_schedule, default_cases, iter_bench, run_bench
from .schedule import BenchProgress, ScheduleLog, round_orders
from .settings import DTYPES, BenchSettings
from .timing import Timing, calls_per_sample, hodges_lehmann_ratio, interleaved_bursts, summarize, time_burst

__all__ = [
    "BENCH_PRESETS",
    "DEFAULT_SIZES",
    "DTYPES",
    "MAX_FIT_ERROR",
    "MIN_FIT_POINTS",
    "BenchCase",
    "BenchProgress",
    "BenchRecord",
    "BenchReport",
    "BenchSettings",
    "ExponentFit",
    "ScheduleLog",
    "StateProbe",
    "Timing",
    "attach_schedule",
    "attended_pairs",
    "build_mixer",
    "busy_message",
    "calls_per_sample",
    "default_cases",
    "estimate_memory_bytes",
    "fit_exponent",
    "fit_exponent_above_fixed_cost",
    "fit_exponent_with_error",
    "format_bytes",
    "gflops_per_second",
    "hodges_lehmann_ratio",
    "grid_for",
    "infer_layout",
    "interleaved_bursts",
    "iter_bench",
    "load_average",
    "parse_bytes",
    "parse_case",
    "parse_size",
    "peak_memory_bytes",
    "plot_report",
    "prebuild_native_kernels",
    "resolve_shape",
    "round_orders",
    "run_bench",
    "state_note",
    "state_summary",
    "summarize",
    "time_burst",
    "useful_flops",
]
