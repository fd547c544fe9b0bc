"""The ``visattn`` command: ``visattn list`` (the registry), ``visattn bench`` (time every mixer against
dense SDPA), ``visattn lens`` (a ViT's attention on one image: metrics, pictures, HTML report) and ``visattn cite``
(BibTeX of the papers behind a name). Progress bars and tables are drawn with rich: the progress bar on stderr,
tables on stdout.

Errors never end in a traceback: output paths are checked before any work starts, and a bad value
(``ValueError``, ``TypeError``, exit status 2) or a failing file operation (``OSError``, exit status 1) is one line
on stderr. The lens is imported only by ``visattn lens``."""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence

import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import bench, cli_lens
from .cite import cite
from .cli_paths import check_output_file, check_output_folder
from .registry import get_mixer_spec, get_module_spec, list_mixers, list_modules

FILE_WIDTH = 160


def _causal(name: str) -> str:
    """``default`` when the mixer is causal unless told otherwise, ``option`` when ``is_causal`` can turn a causal
    mask on, ``-`` when it has none."""
    spec = get_mixer_spec(name)
    if spec.causal_default:
        return "default"
    return "option" if "is_causal" in inspect.signature(spec.factory).parameters else "-"


PAPER_TITLE_MIN_WIDTH = 140
"""Consoles narrower than this get the mixer table without paper titles (the arXiv id names the paper)."""


def _modules_table(width: int = PAPER_TITLE_MIN_WIDTH) -> Table:
    """``visattn list --family modules``: the feature-map modules, which are not token mixers."""
    table = Table(title="visattn feature-map modules (visattn.create_attn)")
    columns = ("name", "paper", "arXiv", "complexity", "faces")
    if width < PAPER_TITLE_MIN_WIDTH:
        columns = tuple(c for c in columns if c != "paper")
    for column in columns:
        table.add_column(column, no_wrap=column in ("name", "arXiv", "complexity"), overflow="ellipsis")
    for name in list_modules():
        spec = get_module_spec(name)
        cells = {"name": name, "paper": spec.paper.title, "arXiv": spec.paper.arxiv or "-",
                 "complexity": spec.complexity, "faces": ", ".join(spec.faces)}
        table.add_row(*(cells[c] for c in columns))
    return table


def _list_table(family: str | None, width: int = PAPER_TITLE_MIN_WIDTH) -> Table:
    if family == "modules":
        return _modules_table(width)
    families = sorted({get_mixer_spec(n).family for n in list_mixers()})
    if family is not None and family not in families:
        raise ValueError(f"--family {family!r} is not a mixer family; choose from {', '.join(families)}")
    names = list_mixers(family)
    table = Table(title="visattn mixers", caption="causal: 'default' = causal unless is_causal=False is passed "
                                                  "(replace_attention refuses these without is_causal)")
    columns = ("name", "family", "causal", "paper", "arXiv", "complexity", "faces")
    if width < PAPER_TITLE_MIN_WIDTH:
        columns = tuple(c for c in columns if c != "paper")
    words = {"name": max(map(len, names)), "family": 12, "causal": 7, "arXiv": 10, "complexity": 13}
    for column in columns:
        # names, ids and costs never fold; titles and faces wrap between words
        table.add_column(column, no_wrap=column in words, min_width=words.get(column), overflow="ellipsis")
    for name in names:
        spec = get_mixer_spec(name)
        cells = {"name": name, "family": spec.family, "causal": _causal(name), "paper": spec.paper.title,
                 "arXiv": spec.paper.arxiv or "-", "complexity": spec.complexity, "faces": ", ".join(spec.faces)}
        table.add_row(*(cells[c] for c in columns))
    return table


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _results_table(report: bench.BenchReport) -> Table:
    s = report.settings
    mode = "forward + backward" if s.backward else "forward"
    table = Table(title=f"visattn bench: {mode}, {s.dtype}, batch {s.batch}, {s.heads} heads x {s.head_dim}, "
                        f"{report.env['torch_threads']} threads, {s.device}")
    for column, justify in (("mixer", "left"), ("shape", "left"), ("N", "right"), ("median ms", "right"),
                            ("IQR ms", "right"), ("SDPA ms", "right"), ("x SDPA", "right"), ("GFLOP/s", "right"),
                            ("density", "right"), ("peak mem", "right"), ("skipped", "left")):
        table.add_column(column, justify=justify, overflow="fold", no_wrap=column not in ("mixer", "skipped"))
    for r in report.records:
        skipped = r.skipped or (f"SDPA: {r.sdpa_skipped}" if r.median_ms is not None and r.sdpa_skipped else "")
        peak = None if r.peak_memory_bytes is None else bench.format_bytes(r.peak_memory_bytes)
        table.add_row(r.label, "x".join(map(str, r.shape)), str(r.tokens), _fmt(r.median_ms, ".2f"),
                      _fmt(r.spread_ms, ".2f"), _fmt(r.sdpa_median_ms, ".2f"), _fmt(r.ratio_to_sdpa, ".2f"),
                      _fmt(r.gflops, ".1f"), _fmt(r.density, ".4f"), peak or "-", skipped)
    return table


def _exponent_table(report: bench.BenchReport) -> Table:
    data = report.to_dict()
    table = Table(title="fitted scaling exponent: time ~ N^alpha")
    table.add_column("mixer")
    table.add_column("alpha", justify="right")
    for label, exponent in data["exponents"].items():
        table.add_row(label, _fmt(exponent, ".2f"))
    table.add_row("dense SDPA", _fmt(data["sdpa_exponent"], ".2f"), style="bold")
    return table


def _argument(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type`` that keeps ``parse``'s ``ValueError`` message in the usage error."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = parse.__name__
    return convert


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help and usage texts carry no reStructuredText double backticks (the help
    strings share docstrings' markup; a terminal shows it literally)."""

    def format_help(self) -> str:
        return super().format_help().replace("``", "")

    def format_usage(self) -> str:
        return super().format_usage().replace("``", "")


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` except for flags and for options whose default is decided later (None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="visattn", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="the registered mixers as a table")
    listing.add_argument("--family", default=None, help="only mixers of this family")

    run = commands.add_parser("bench", help="time mixers against dense SDPA (table, JSON, plot)",
                              formatter_class=_DefaultsHelpFormatter)
    run.add_argument("--mixers", nargs="+", metavar="MIXER", default=None,
                     help="'name' or 'name:key=value,...'; every registered mixer when left out")
    run.add_argument("--sizes", nargs="+", metavar="SIZE", type=_argument(bench.parse_size), default=None,
                     help="int sides (s*s tokens in each mixer's layout) or shapes like 16x32x32; "
                          f"{' '.join(map(str, bench.DEFAULT_SIZES))} when left out")
    defaults = bench.BenchSettings
    run.add_argument("--heads", type=int, default=defaults.heads, help="attention heads of q, k, v")
    run.add_argument("--head-dim", type=int, default=defaults.head_dim, help="channels per head")
    run.add_argument("--batch", type=int, default=defaults.batch, help="batch size")
    run.add_argument("--dtype", choices=tuple(bench.DTYPES), default=defaults.dtype, help="dtype of q, k, v")
    run.add_argument("--device", default=defaults.device, help="torch device, e.g. cpu or cuda")
    run.add_argument("--backward", action="store_true", help="time forward + backward of out.sum()")
    run.add_argument("--repeats", type=int, default=defaults.repeats, help="timed calls per (mixer, size)")
    run.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed calls first (>= 1)")
    run.add_argument("--prefix-tokens", type=int, default=defaults.num_prefix_tokens,
                     help="global tokens in front of the grid")
    run.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; torch's choice when left out")
    run.add_argument("--memory-budget", type=_argument(bench.parse_bytes), default=None,
                     help="skip sizes whose estimated memory exceeds this, e.g. 4G; half the RAM when left out")
    run.add_argument("--time-budget", type=float, default=defaults.time_budget_s,
                     help="seconds per call above which a size is skipped")
    run.add_argument("--no-memory", action="store_true", help="do not profile peak memory")
    run.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random q, k, v")
    run.add_argument("--json", metavar="PATH", default=None, help="write the records to this JSON file")
    run.add_argument("--plot", metavar="PATH", default=None, help="write a log-log PNG plot to this file")
    cli_lens.add_parser(commands)
    citing = commands.add_parser("cite", help="BibTeX of the paper(s) behind a mixer, edit, metric or paper",
                                 description="Print the BibTeX of the paper(s) behind NAME, from the paper table "
                                             "that feeds the docs; visattn's own entry without NAME.")
    citing.add_argument("name", nargs="?", default=None, metavar="NAME",
                        help="a mixer (neighborhood), edit (VisualAttentionRedistribution), metric "
                             "(mean_attention_distance), transform (polar_resample), paper key or arXiv id")
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path the command names, checked before the run starts."""
    if args.command == "bench":
        if args.json:
            check_output_file(args.json, "--json", "bench.json")
        if args.plot:
            check_output_file(args.plot, "--plot", "bench.png")
    elif args.command == "lens":
        check_output_folder(args.out, "--out")


def _settings(args: argparse.Namespace) -> bench.BenchSettings:
    budget = {} if args.memory_budget is None else {"memory_budget": args.memory_budget}
    return bench.BenchSettings(heads=args.heads, head_dim=args.head_dim, batch=args.batch, dtype=args.dtype,
                               device=args.device, backward=args.backward, repeats=args.repeats,
                               warmup=args.warmup, num_prefix_tokens=args.prefix_tokens,
                               time_budget_s=args.time_budget, measure_memory=not args.no_memory,
                               seed=args.seed, **budget)


def _bench(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    settings = _settings(args)
    cases = bench.default_cases() if args.mixers is None else [bench.parse_case(m) for m in args.mixers]
    sizes = list(bench.DEFAULT_SIZES if args.sizes is None else args.sizes)
    report = bench.BenchReport(settings)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("benchmarking", total=len(cases) * len(sizes))
        for record in bench.iter_bench(cases, sizes, settings):
            report.records.append(record)
            progress.update(task, advance=1, description=f"{record.label} {'x'.join(map(str, record.shape))}")
    out.print(_results_table(report))
    out.print(_exponent_table(report))
    if args.json:
        report.write_json(args.json)
        out.print(f"JSON written to {args.json}")
    if args.plot:
        bench.plot_report(report, args.plot)
        out.print(f"plot written to {args.plot}")
    return 0


def _console(stderr: bool = False) -> Console:
    """A rich console; 160 columns wide when writing to a file or pipe without ``COLUMNS`` set (rich's 80 would
    fold the tables)."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(stderr=stderr, width=FILE_WIDTH)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``visattn`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    out, err = _console(), _console(stderr=True)
    handler = RichHandler(console=err, show_path=False)
    logger = logging.getLogger("visattn")
    logger.addHandler(handler)
    try:
        _check_outputs(args)
        if args.command == "list":
            out.print(_list_table(args.family, out.width))
            return 0
        if args.command == "cite":
            out.print(cite(args.name), end="", highlight=False, markup=False, soft_wrap=True)
            return 0
        if args.command == "lens":
            from .lens import command as lens_command

            return lens_command.execute(args, out)
        return _bench(args, out, err)
    except (ValueError, TypeError) as error:
        _fail(err, args.command, error)
        return 2
    except OSError as error:
        _fail(err, args.command, error)
        return 1
    finally:
        logger.removeHandler(handler)


def _fail(err: Console, command: str, error: BaseException) -> None:
    """``error`` as one line on stderr (messages that span lines, like PyTorch's, are joined)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError)):
        message = f"{type(error).__name__}: {message}"
    err.print(f"[bold red]visattn {command}:[/] {escape(message)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
