"""The benchmark's plots: median time per call against tokens (log-log), one line per mixer plus dense SDPA; and
a model's images/s against image size, one line per attention variant."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .fit import ExponentFit
from .model import UNMODIFIED, ModelBenchReport
from .record import BenchReport, exponent_fits, sdpa_exponent_fit, sdpa_times

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MARKERS = "o^vD<>pX*h"
"""One marker per group of ten lines, so that lines sharing a colour of the ten-colour cycle stay apart."""

LEGEND_ROWS = 28


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Sequence[tuple[float, float, float]]]:
    """A figure on the Agg canvas (no pyplot state) and the ten colours of ``tab10``. matplotlib is imported here,
    on the first plot, not with :mod:`visattn.bench` or the command line: it takes a good part of a second."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, matplotlib.colormaps["tab10"].colors


def _with_exponent(label: str, fit: ExponentFit | None) -> str:
    """``label (N^alpha ± se)`` where the fit is sound, the bare label otherwise."""
    if fit is None or not fit.sound():
        return label
    return f"{label} (N^{fit.alpha:.2f} ± {fit.stderr:.2f})"


def plot_report(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Write a PNG to ``path``: median ms against tokens on log-log axes; skipped sizes are left out and the
    fitted exponent of each line (with its standard error) is in the legend where the fit is sound. Uses the Agg
    canvas directly (no pyplot state)."""
    figure, colors = _figure((11, 6))
    axes = figure.add_subplot()
    fits = exponent_fits(report.records)
    for index, (label, fit) in enumerate(fits.items()):
        timed = sorted((r.tokens, r.median_ms) for r in report.records if r.label == label and r.median_ms)
        if timed:
            axes.plot(*zip(*timed, strict=True), color=colors[index % len(colors)],
                      marker=MARKERS[index // len(colors) % len(MARKERS)], label=_with_exponent(label, fit))
    dense = sdpa_times(report.records)
    if dense:
        axes.plot(list(dense), list(dense.values()), color="black", linestyle="--", marker="s",
                  label=_with_exponent("dense SDPA", sdpa_exponent_fit(report.records)))
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


def plot_model_report(report: ModelBenchReport, path: str | os.PathLike[str]) -> None:
    """Write a PNG to ``path``: images/s against image size, one panel per mode (forward, forward + backward),
    one line per variant (the unmodified model dashed black); skipped sizes are left out."""
    modes = report.settings.modes
    figure, colors = _figure((6 * len(modes) + 2, 5))
    labels = list(dict.fromkeys(r.label for r in report.records))
    sizes = sorted({r.img_size for r in report.records})
    for column, mode in enumerate(modes):
        axes = figure.add_subplot(1, len(modes), column + 1)
        for index, label in enumerate(labels):
            points = sorted((r.img_size, r.images_per_s) for r in report.records
                            if r.label == label and r.mode == mode and r.images_per_s)
            if not points:
                continue
            style = ({"color": "black", "linestyle": "--", "marker": "s"} if label == UNMODIFIED else
                     {"color": colors[index % len(colors)], "marker": MARKERS[index // len(colors) % len(MARKERS)]})
            axes.plot(*zip(*points, strict=True), label=label, **style)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(sizes, [str(s) for s in sizes])
        axes.minorticks_off()
        axes.set_xlabel("image size (pixels per side)")
        axes.set_ylabel("images / s")
        axes.set_title(f"{report.model}, {mode}, batch {report.settings.batch}")
        axes.grid(True, which="both", alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize="small")
    figure.suptitle(f"{report.settings.dtype}, {report.env.get('torch_threads')} threads on {report.settings.device}")
    figure.savefig(path, dpi=120)
