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

from . import bench, cli_arena, cli_codec, cli_compare, cli_lens, cli_search
from .bench import model as bench_model
from .bench import tables
from .bench.allocator import keep_freed_memory
from .bench.model import DEFAULT_IMG_SIZES, ModelBenchReport, ModelBenchSettings, check_model_name, iter_model_bench
from .bench.outputs import output_paths, prepare
from .bench.plot import plot_model_report
from .cite import cite
from .cli_paths import check_output_file, check_output_folder
from .registry import get_mixer_spec, get_module_spec, list_mixers, list_modules

FILE_WIDTH = 160

MODEL_DEFAULT_MIXERS = ("softmax", "neighborhood", "window")
"""The mixers ``visattn bench --model`` compares with the unmodified model when ``--mixers`` is left out."""


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

    run = commands.add_parser("bench", help="time mixers against dense SDPA, or a timm model with its attention "
                                             "swapped (table, JSON, plot)", formatter_class=_DefaultsHelpFormatter)
    run.add_argument("--mixers", nargs="+", metavar="MIXER", default=None,
                     help="'name' or 'name:key=value,...'; every registered mixer when left out (with --model: "
                          f"{' '.join(MODEL_DEFAULT_MIXERS)})")
    run.add_argument("--sizes", nargs="+", metavar="SIZE", type=_argument(bench.parse_size), default=None,
                     help="int sides (s*s tokens in each mixer's layout) or shapes like 16x32x32; "
                          f"{' '.join(map(str, bench.DEFAULT_SIZES))} when left out")
    run.add_argument("--model", default=None, metavar="NAME",
                     help="time this timm model (random weights, nothing downloaded) as built and with its attention "
                          "replaced by each mixer, in images/s forward and forward + backward")
    run.add_argument("--img-size", nargs="+", type=int, metavar="PIXELS", default=None,
                     help="with --model: image sides passed to timm.create_model; "
                          f"{' '.join(map(str, DEFAULT_IMG_SIZES))} when left out")
    run.add_argument("--forward-only", action="store_true", help="with --model: skip the forward + backward mode")
    defaults = bench.BenchSettings
    run.add_argument("--heads", type=int, default=defaults.heads, help="attention heads of q, k, v")
    run.add_argument("--head-dim", type=int, default=defaults.head_dim, help="channels per head")
    run.add_argument("--batch", type=int, default=None,
                     help=f"batch size; {defaults.batch} when left out ({ModelBenchSettings.batch} with --model)")
    run.add_argument("--dtype", choices=tuple(bench.DTYPES), default=defaults.dtype, help="dtype of q, k, v")
    run.add_argument("--device", default=defaults.device, help="torch device, e.g. cpu or cuda")
    run.add_argument("--backward", action="store_true", help="time forward + backward of out.sum()")
    run.add_argument("--repeats", type=int, default=None,
                     help=f"timing samples per (mixer, size); {defaults.repeats} when left out "
                          f"({ModelBenchSettings.repeats} with --model)")
    run.add_argument("--min-sample", type=float, default=None, metavar="SECONDS",
                     help=f"each sample is a burst of consecutive calls lasting at least this long; "
                          f"{defaults.min_sample_s} when left out ({ModelBenchSettings.min_sample_s} with --model)")
    run.add_argument("--spread-limit", type=float, default=defaults.spread_limit, metavar="FRACTION",
                     help="flag a row whose per-round ratio to the baseline has an interquartile range above "
                          "this fraction of its median")
    run.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed calls first (>= 1)")
    run.add_argument("--prefix-tokens", type=int, default=defaults.num_prefix_tokens,
                     help="global tokens in front of the grid")
    run.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; torch's choice when left out")
    run.add_argument("--memory-budget", type=_argument(bench.parse_bytes), default=None,
                     help="skip sizes whose estimated memory exceeds this, e.g. 4G; half the RAM when left out")
    run.add_argument("--time-budget", type=float, default=None,
                     help=f"seconds per call above which a size is skipped; {defaults.time_budget_s:g} when left out "
                          f"({ModelBenchSettings.time_budget_s:g} with --model)")
    run.add_argument("--no-memory", action="store_true", help="do not profile peak memory")
    run.add_argument("--seed", type=int, default=defaults.seed,
                     help="seed of the random inputs (and of the mixers' order in each round)")
    run.add_argument("--json", metavar="PATH", default=None,
                     help="write the records to this JSON file (default: bench.json in a new ./visattn-bench/ "
                          "folder; naming --json or --plot writes only what is named)")
    run.add_argument("--plot", metavar="PATH", default=None,
                     help="write the PNG plot to this file (default: bench.png beside the default JSON)")
    run.add_argument("--no-save", action="store_true", help="write no JSON or plot unless --json/--plot name one")
    run.add_argument("--system-allocator", action="store_true",
                     help="keep glibc malloc's defaults (large temporaries are mapped and unmapped on every call) "
                          "instead of keeping freed memory (visattn.bench.allocator)")
    run.add_argument("--isolate", action="store_true",
                     help="time each mixer in its own fresh process instead of all in this one, case by case "
                          "(visattn.bench.isolation)")
    run.add_argument("--case-by-case", action="store_true",
                     help="take each mixer's rounds right after its probes instead of rounds across all mixers "
                          "(visattn.bench.schedule)")
    cli_lens.add_parser(commands)
    cli_arena.add_parser(commands)
    cli_codec.add_parser(commands)
    cli_search.add_parser(commands)
    cli_compare.add_parser(commands)
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


def _given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The settings whose defaults differ between mixer and model benchmarks, where the command line gives them."""
    given = {"batch": args.batch, "repeats": args.repeats, "time_budget_s": args.time_budget,
             "min_sample_s": args.min_sample}
    return {name: value for name, value in given.items() if value is not None}


def _settings(args: argparse.Namespace) -> bench.BenchSettings:
    budget = {} if args.memory_budget is None else {"memory_budget": args.memory_budget}
    given = _given_settings(args)
    return bench.BenchSettings(heads=args.heads, head_dim=args.head_dim, dtype=args.dtype, device=args.device,
                               backward=args.backward, warmup=args.warmup, num_prefix_tokens=args.prefix_tokens,
                               spread_limit=args.spread_limit,
                               measure_memory=not args.no_memory, seed=args.seed, isolate=args.isolate,
                               rounds_across_cases=not args.case_by_case, **given, **budget)


def _model_settings(args: argparse.Namespace) -> ModelBenchSettings:
    for flag, value in (("--sizes", args.sizes), ("--backward", args.backward), ("--isolate", args.isolate),
                        ("--case-by-case", args.case_by_case)):
        if value:
            raise ValueError(f"{flag} applies to mixer benchmarks, not to --model (use --img-size, --forward-only)")
    given = _given_settings(args)
    return ModelBenchSettings(dtype=args.dtype, device=args.device, warmup=args.warmup,
                              spread_limit=args.spread_limit, backward=not args.forward_only,
                              measure_memory=not args.no_memory, seed=args.seed, **given)


def _progress(err: Console) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=err)


def _bench_mixers(args: argparse.Namespace, err: Console) -> bench.BenchReport:
    if args.img_size is not None or args.forward_only:
        raise ValueError("--img-size and --forward-only apply to --model benchmarks only")
    settings = _settings(args)
    cases = bench.default_cases() if args.mixers is None else [bench.parse_case(m) for m in args.mixers]
    sizes = list(bench.DEFAULT_SIZES if args.sizes is None else args.sizes)
    report, schedule = bench.BenchReport(settings), bench.ScheduleLog()
    with _progress(err) as progress:
        task = progress.add_task("building native kernels", total=len(cases) * (len(sizes) + settings.repeats))

        def step(p: bench.BenchProgress) -> None:  # a step: each (mixer, size) probed, each mixer's bursts per round
            progress.update(task, completed=p.done, total=p.total, description=p.description)

        report.records.extend(bench.iter_bench(cases, sizes, settings, schedule=schedule, on_progress=step))
    bench.attach_schedule(report, schedule)
    return report


def _bench_model(args: argparse.Namespace, err: Console) -> ModelBenchReport:
    settings = _model_settings(args)
    model = check_model_name(args.model)
    cases = [bench.parse_case(m) for m in (MODEL_DEFAULT_MIXERS if args.mixers is None else args.mixers)]
    sizes = list(DEFAULT_IMG_SIZES if args.img_size is None else args.img_size)
    report = ModelBenchReport(model, settings)
    with _progress(err) as progress:
        variants = len(bench_model.baseline_labels(model)) + len(cases)
        task = progress.add_task("building native kernels", total=variants * len(sizes) * len(settings.modes))
        for record in iter_model_bench(model, cases, sizes, settings):
            report.records.append(record)
            progress.update(task, advance=1, description=f"{record.label} {record.img_size} {record.mode}")
    return report


def _bench(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    json_path, plot_path = output_paths(args.json, args.plot, save=not args.no_save)
    if not args.system_allocator:
        keep_freed_memory()
    load = bench.load_average()
    busy = bench.busy_message(None if load is None else load[0], os.cpu_count(), torch.get_num_threads())
    if busy:
        err.print(f"[bold yellow]visattn bench:[/] {busy}", highlight=False)
    if args.model is None:
        report = _bench_mixers(args, err)
        out.print(tables.results_table(report))
        out.print(tables.exponent_table(report))
        plot = bench.plot_report
    else:
        report = _bench_model(args, err)
        out.print(tables.model_table(report))
        plot = plot_model_report
    footnote = tables.noisy_footnote(report.settings.spread_limit, sum(bool(r.noisy) for r in report.records))
    if footnote:
        out.print(footnote, highlight=False)
    state = bench.state_note(report.env["machine_state"]) if "machine_state" in report.env else ""
    if state:
        out.print(state, highlight=False)
    if json_path is not None:
        report.write_json(prepare(json_path))
        out.print(f"JSON written to {json_path}", highlight=False)
    if plot_path is not None:
        plot(report, prepare(plot_path))
        out.print(f"plot written to {plot_path}", highlight=False)
    if json_path is None and plot_path is None:
        out.print("nothing saved (--no-save); --json PATH and --plot PATH write the records and the plot")
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
        if args.command == "arena":
            return cli_arena.execute(args, out, err)
        if args.command == "codec":
            return cli_codec.execute(args, out)
        if args.command == "search":
            return cli_search.execute(args, out)
        if args.command == "compare":
            return cli_compare.execute(args, out)
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
