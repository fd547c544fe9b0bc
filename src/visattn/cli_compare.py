"""``visattn compare``: read two or more ``visattn bench --json`` files and say which ratios to SDPA agree, each
run's exponents, and whether the runs were timed in the same machine state (:mod:`visattn.bench.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .bench import compare

DESCRIPTION = ("Compare visattn bench runs from their JSON files: the ratio to SDPA of every row timed in all of "
               "them (rows of at least --min-ms in one run), marked where the largest is more than --agreement "
               "above the smallest; each run's fitted exponents; each run's machine-state probe median.")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to the ``visattn`` parser."""
    parser = commands.add_parser("compare", help="compare visattn bench runs from their JSON files",
                                 description=DESCRIPTION)
    parser.add_argument("runs", type=Path, nargs="+", metavar="JSON", help="two or more visattn bench --json files")
    parser.add_argument("--agreement", type=float, default=compare.AGREEMENT, metavar="FRACTION",
                        help=f"ratios agree within this fraction (default {compare.AGREEMENT})")
    parser.add_argument("--min-ms", type=float, default=compare.MIN_MS, metavar="MS",
                        help=f"leave out rows faster than this in every run (default {compare.MIN_MS})")


def _per_run_table(title: str, paths: list[Path], before: tuple[str, ...], after: tuple[str, ...] = ()) -> Table:
    """A table with a ``mixer`` column, the ``before`` columns, one column per run (numbered, with its file name),
    then the ``after`` columns."""
    table = Table(title=title)
    table.add_column("mixer", no_wrap=True)
    for name in (*before, *(f"{i}: {path.name}" for i, path in enumerate(paths, 1)), *after):
        table.add_column(name, justify="right")
    return table


def _table(paths: list[Path], rows: list[compare.RowComparison], agreement: float) -> Table:
    table = _per_run_table(f"ratio to SDPA in each run; ! where the largest is more than {100 * agreement:.0f}% "
                           "above the smallest", paths, ("N",), ("spread",))
    for row in rows:
        mark = "" if row.agrees(agreement) else " !"
        table.add_row(row.label, str(row.tokens), *(f"{r:.2f}" for r in row.ratios), f"{100 * row.spread:.0f}%{mark}")
    return table


def _exponents(paths: list[Path], runs: list[dict]) -> Table:
    table = _per_run_table("fitted exponent in each run (- where the fit was not sound)", paths, ())
    for label in dict.fromkeys(label for run in runs for label in run.get("exponents", {})):
        alphas = [run.get("exponents", {}).get(label) for run in runs]
        table.add_row(label, *("-" if a is None else f"{a:.2f}" for a in alphas))
    return table


def execute(args: argparse.Namespace, out: Console) -> int:
    """Run ``visattn compare``; 0 whether or not the runs agree (the table says)."""
    if len(args.runs) < 2:
        raise ValueError(f"JSON must name at least two runs to compare, got {len(args.runs)}")
    if not 0 <= args.agreement < float("inf"):
        raise ValueError(f"--agreement must be a finite number >= 0, got {args.agreement}")
    runs = [compare.load_run(path) for path in args.runs]
    rows = compare.compare_rows(runs, args.min_ms)
    out.print(_table(args.runs, rows, args.agreement))
    agreeing = sum(row.agrees(args.agreement) for row in rows)
    out.print(f"{agreeing} of {len(rows)} rows agree within {100 * args.agreement:.0f}%", highlight=False)
    out.print(_exponents(args.runs, runs))
    medians = compare.state_medians(runs)
    out.print("machine-state probe median (ms): " + ", ".join("-" if m is None else f"{m:.3f}" for m in medians),
              highlight=False)
    if compare.states_differ(medians, args.agreement):
        out.print("The runs were timed in different machine states: memory-bound rows made of many torch ops may "
                  "disagree for that reason alone (docs/benchmarks.md, 'Two speeds').", highlight=False)
    return 0
