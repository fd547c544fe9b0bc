"""What ``visattn arena`` writes: the results table (rich for the terminal, Markdown for the folder), the JSON of
every run, and three plots: accuracy against steps, final accuracy against training images/s, and accuracy against
test size (the extrapolation curve; the training size marked)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arena import ArenaConfig, MixerResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table

PLOTS = ("accuracy_vs_steps.png", "accuracy_vs_speed.png", "extrapolation.png")
TABLE_NAME = "results.md"
JSON_NAME = "results.json"


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table_rows(config: ArenaConfig, results: Sequence[MixerResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: mixer, parameters, final training loss, accuracy (%) at each test size (the training
    size first), median training images/s, wall seconds."""
    sizes = list(dict.fromkeys((config.size, *config.eval_sizes)))
    header = ["mixer", "params", "final loss", *(f"acc@{s}" + (" (train size)" if s == config.size else "")
                                                 for s in sizes), "images/s", "wall s"]
    rows = []
    for r in results:
        loss = "-" if math.isnan(r.final_loss) else f"{r.final_loss:.3f}"
        rows.append([r.label, f"{r.parameters:,}", loss, *(_accuracy(r.accuracy.get(s)) for s in sizes),
                     f"{r.images_per_s:.0f}", f"{r.wall_s:.0f}"])
    return header, rows


def _title(config: ArenaConfig, world_size: int) -> str:
    t = config.train
    return (f"visattn arena: {config.task} at {config.size}px, {config.model}, {t.steps} steps x batch "
            f"{t.batch_size} on {world_size} process(es), seed {t.seed}")


def rich_table(config: ArenaConfig, results: Sequence[MixerResult], world_size: int = 1) -> Table:
    from rich.table import Table

    header, rows = table_rows(config, results)
    table = Table(title=_title(config, world_size))
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=index > 0)
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(config: ArenaConfig, results: Sequence[MixerResult], world_size: int = 1) -> str:
    header, rows = table_rows(config, results)
    lines = [f"# {_title(config, world_size)}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    failures = [f"- {r.label} at {size}px: {why}" for r in results for size, why in r.failures.items()]
    if failures:
        lines += ["", "Sizes a model could not run at:", *failures]
    return "\n".join(lines) + "\n"


def results_json(config: ArenaConfig, results: Sequence[MixerResult], env: dict[str, Any]) -> dict[str, Any]:
    return {"config": config.as_dict(), "env": env, "results": [r.as_dict(config.size) for r in results]}


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Sequence[Any]]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, matplotlib.colormaps["tab10"].colors


def _chance(config: ArenaConfig) -> float:
    from ..tasks.procedural import get_task

    return 1.0 / get_task(config.task).num_classes


def _finish(figure: Any, axes: Any, config: ArenaConfig, xlabel: str, ylabel: str, title: str,
            path: str | os.PathLike[str]) -> None:
    """The chance line, labels, grid and legend every arena plot shares; then save the figure to ``path``."""
    axes.axhline(_chance(config), color="grey", linestyle=":", label="chance")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=110)


def plot_accuracy_vs_steps(config: ArenaConfig, results: Sequence[MixerResult], path: str | os.PathLike[str]) -> None:
    figure, colors = _figure((7, 4.5))
    axes = figure.add_subplot()
    for index, r in enumerate(results):
        curve = r.curve(config.size)
        if curve:
            axes.plot(*zip(*curve, strict=True), marker="o", color=colors[index % len(colors)], label=r.label)
    _finish(figure, axes, config, "training step", f"test accuracy at {config.size}px",
            f"{config.task}: accuracy during training", path)


def plot_accuracy_vs_speed(config: ArenaConfig, results: Sequence[MixerResult], path: str | os.PathLike[str]) -> None:
    figure, colors = _figure((7, 4.5))
    axes = figure.add_subplot()
    for index, r in enumerate(results):
        accuracy = r.accuracy.get(config.size)
        if accuracy is not None:
            axes.scatter([r.images_per_s], [accuracy], s=60, color=colors[index % len(colors)], label=r.label)
    _finish(figure, axes, config, "training throughput (images/s, median step)",
            f"final test accuracy at {config.size}px", f"{config.task}: accuracy against speed", path)


def plot_extrapolation(config: ArenaConfig, results: Sequence[MixerResult], path: str | os.PathLike[str]) -> None:
    figure, colors = _figure((7, 4.5))
    axes = figure.add_subplot()
    for index, r in enumerate(results):
        points = sorted((s, a) for s, a in r.accuracy.items() if a is not None)
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", color=colors[index % len(colors)], label=r.label)
    axes.axvline(config.size, color="black", linestyle="--", alpha=0.5, label="training size")
    _finish(figure, axes, config, "test image side (px)", "final test accuracy",
            f"{config.task}: trained at {config.size}px, tested larger", path)


def write_outputs(config: ArenaConfig, results: Sequence[MixerResult], out: str | os.PathLike[str],
                  env: dict[str, Any], world_size: int = 1) -> list[Path]:
    """Write the table, the JSON and the plots into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE_NAME).write_text(markdown_table(config, results, world_size))
    (out / JSON_NAME).write_text(json.dumps(results_json(config, results, env), indent=2) + "\n")
    for name, plot in zip(PLOTS, (plot_accuracy_vs_steps, plot_accuracy_vs_speed, plot_extrapolation), strict=True):
        plot(config, results, out / name)
    return [out / TABLE_NAME, out / JSON_NAME, *(out / name for name in PLOTS)]
