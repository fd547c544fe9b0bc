"""The benchmark's log-log plot: median time per call against tokens, one line per mixer plus dense SDPA."""

from __future__ import annotations

import os

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .record import BenchReport, exponents_by_label, sdpa_exponent, sdpa_times

MARKERS = "o^vD<>pX*h"
"""One marker per group of ten lines, so that lines sharing a colour of the ten-colour cycle stay apart."""

LEGEND_ROWS = 28


def _with_exponent(label: str, exponent: float | None) -> str:
    return label if exponent is None else f"{label} (N^{exponent:.2f})"


def plot_report(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Write a PNG to ``path``: median ms against tokens on log-log axes; skipped sizes are left out and the
    fitted exponent of each line is in the legend. Uses the Agg canvas directly (no pyplot state)."""
    figure = Figure(figsize=(11, 6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    exponents = exponents_by_label(report.records)
    colors = matplotlib.colormaps["tab10"].colors
    for index, (label, exponent) in enumerate(exponents.items()):
        timed = sorted((r.tokens, r.median_ms) for r in report.records if r.label == label and r.median_ms)
        if timed:
            axes.plot(*zip(*timed, strict=True), color=colors[index % len(colors)],
                      marker=MARKERS[index // len(colors) % len(MARKERS)], label=_with_exponent(label, exponent))
    dense = sdpa_times(report.records)
    if dense:
        axes.plot(list(dense), list(dense.values()), color="black", linestyle="--", marker="s",
                  label=_with_exponent("dense SDPA", sdpa_exponent(report.records)))
    s = report.settings
    mode = "forward + backward" if s.backward else "forward"
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("tokens N")
    axes.set_ylabel("median time per call (ms)")
    axes.set_title(f"{mode}, {s.dtype}, batch {s.batch}, {s.heads} heads x {s.head_dim}, "
                   f"{report.env.get('torch_threads')} threads on {s.device}")
    axes.grid(True, which="both", alpha=0.3)
    if axes.has_data():
        lines = len(axes.get_lines())
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1 + lines // LEGEND_ROWS)
    figure.savefig(path, dpi=120)
