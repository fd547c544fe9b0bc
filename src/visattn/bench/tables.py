"""The tables ``visattn bench`` prints (rich): per-size timings with the noisy flag, the fitted exponents, and a
model's images/s. Built here, printed by the CLI."""

from __future__ import annotations

from rich.table import Table

from .budget import format_bytes
from .fit import MAX_FIT_ERROR, MIN_FIT_POINTS, ExponentFit
from .model import MODES, UNMODIFIED, ModelBenchReport, ModelRecord
from .record import BenchReport, exponent_fits, log_log_fits, sdpa_exponent_fit, sdpa_times
from .runner import LONG_CALL_SAMPLES

NOISY_MARK = "!"


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def noisy_footnote(spread_limit: float, count: int) -> str:
    """The line under a table with ``count`` noisy rows (empty when none)."""
    if not count:
        return ""
    return (f"{NOISY_MARK} {count} row(s): interquartile range above {100 * spread_limit:.0f}% of the median (of the "
            "per-round ratios to the baseline, or of the mixer's times without one); "
            "the ratio is uncertain. Rerun on an idle machine or with more --repeats.")


def results_table(report: BenchReport) -> Table:
    """One row per (mixer, size): median ms and relative spread of the mixer and of SDPA, the ratio (marked when
    noisy), GFLOP/s, density, peak memory, and why anything was skipped."""
    s = report.settings
    mode = "forward + backward" if s.backward else "forward"
    table = Table(title=f"visattn bench: {mode}, {s.dtype}, batch {s.batch}, {s.heads} heads x {s.head_dim}, "
                        f"{report.env['torch_threads']} threads, {s.device}; median of {s.repeats} bursts of "
                        f">= {s.min_sample_s:g} s (every other round for calls of "
                        f">= {LONG_CALL_SAMPLES * s.min_sample_s:g} s), "
                        "interleaved with SDPA; x SDPA: Hodges-Lehmann estimate of the per-round ratios")
    for column, justify in (("mixer", "left"), ("shape", "left"), ("N", "right"), ("median ms", "right"),
                            ("IQR", "right"), ("SDPA ms", "right"), ("SDPA IQR", "right"), ("x SDPA", "right"),
                            ("GFLOP/s", "right"), ("density", "right"), ("peak mem", "right"), ("skipped", "left")):
        table.add_column(column, justify=justify, overflow="fold", no_wrap=column != "skipped")
    for r in report.records:
        skipped = r.skipped or (f"SDPA: {r.sdpa_skipped}" if r.median_ms is not None and r.sdpa_skipped else "")
        peak = None if r.peak_memory_bytes is None else format_bytes(r.peak_memory_bytes)
        ratio = _fmt(r.ratio_to_sdpa, ".2f") + (f" {NOISY_MARK}" if r.noisy else "")
        table.add_row(r.label, "x".join(map(str, r.shape)), str(r.tokens), _fmt(r.median_ms, ".2f"),
                      _percent(r.relative_spread), _fmt(r.sdpa_median_ms, ".2f"), _percent(r.sdpa_relative_spread),
                      ratio, _fmt(r.gflops, ".1f"), _fmt(r.density, ".4f"), peak or "-", skipped)
    return table


def _fit_row(label: str, fit: ExponentFit | None, timed: int, plain: ExponentFit | None) -> tuple[str, ...]:
    fixed = "" if fit is None or fit.fixed_ms is None else f"{fit.fixed_ms:.3f}"
    raw = f"{plain.alpha:.2f}" if plain is not None and plain.sound() else ""
    if fit is None:
        return label, "", "", fixed, raw, str(timed), f"fewer than {MIN_FIT_POINTS} sizes timed"
    stderr = "" if fit.stderr is None else f"{fit.stderr:.2f}"
    if fit.sound():
        return label, f"{fit.alpha:.2f}", stderr, fixed, raw, str(fit.points), ""
    if fit.points < MIN_FIT_POINTS:
        return label, "", stderr, fixed, raw, str(fit.points), f"fewer than {MIN_FIT_POINTS} sizes timed"
    return label, "", stderr, fixed, raw, str(fit.points), f"standard error above {MAX_FIT_ERROR:g}"


def exponent_table(report: BenchReport) -> Table:
    """The fitted exponent alpha per mixer and for SDPA, with its standard error: of the work above the fixed cost
    ``t0`` of a call where the case timed it (``time = t0 + c (N^alpha - N0^alpha)``, see
    :mod:`visattn.bench.fit`), next to the plain log-log slope; alpha is left empty where the fit is not sound (too
    few sizes or too uncertain), with the reason."""
    table = Table(title="fitted scaling exponent: time = t0 + c (N^alpha - N0^alpha), t0 timed at N0 = 64 tokens "
                        "(plain log-log slope beside it)")
    for column, justify in (("mixer", "left"), ("alpha", "right"), ("std err", "right"), ("t0 ms", "right"),
                            ("log-log alpha", "right"), ("sizes", "right"), ("not reported because", "left")):
        table.add_column(column, justify=justify, no_wrap=column == "mixer")
    plain = log_log_fits(report.records)
    for label, fit in exponent_fits(report.records).items():
        timed = sum(r.label == label and r.median_ms is not None for r in report.records)
        table.add_row(*_fit_row(label, fit, timed, plain.get(label)))
    dense = sdpa_exponent_fit(report.records)
    table.add_row(*_fit_row("dense SDPA", dense, len(sdpa_times(report.records)), dense), style="bold")
    return table


def _cell(record: ModelRecord | None) -> tuple[str, str]:
    if record is None or record.images_per_s is None:
        return "-", "-"
    ratio = _fmt(record.ratio_to_unmodified, ".2f") + (f" {NOISY_MARK}" if record.noisy else "")
    return f"{record.images_per_s:.1f}", ratio


def model_table(report: ModelBenchReport) -> Table:
    """One row per (variant, image size): images/s and the ratio to the unmodified model for each mode, peak
    memory of each mode, and why anything was skipped."""
    s = report.settings
    table = Table(title=f"visattn bench --model {report.model}: batch {s.batch}, {s.dtype}, "
                        f"{report.env['torch_threads']} threads, {s.device}; median of {s.repeats} bursts of "
                        f">= {s.min_sample_s:g} s, variants interleaved")
    columns = [("attention", "left"), ("img", "right"), ("tokens", "right")]
    for mode in s.modes:
        short = "fwd" if mode == "forward" else "fwd+bwd"
        columns += [(f"{short} img/s", "right"), (f"{short} x unmod.", "right"), (f"{short} peak mem", "right")]
    columns.append(("skipped", "left"))
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="fold", no_wrap=column != "skipped")
    by_key = {(r.label, r.img_size, r.mode): r for r in report.records}
    for label, img_size in dict.fromkeys((r.label, r.img_size) for r in report.records):
        records = [by_key.get((label, img_size, mode)) for mode in MODES if mode in s.modes]
        first = next(r for r in records if r is not None)
        row = [label if label != UNMODIFIED else f"{UNMODIFIED} (timm)", str(img_size),
               "-" if first.tokens is None else str(first.tokens)]
        for record in records:
            peak = None if record is None or record.peak_memory_bytes is None else record.peak_memory_bytes
            row += [*_cell(record), "-" if peak is None else format_bytes(peak)]
        skips = [(r.mode, r.skipped) for r in records if r is not None and r.skipped]
        if len({reason for _, reason in skips}) == 1:
            row.append(skips[0][1])
        else:
            row.append("; ".join(f"{mode}: {reason}" for mode, reason in skips))
        table.add_row(*row)
    return table
