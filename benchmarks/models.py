"""Which attention for which model and resolution: a timm model as built and with its attention swapped by
``visattn.replace_attention``, images/s forward and forward + backward, as a Markdown table for
docs/choosing.md.

    python benchmarks/models.py --model vit_small_patch16_224 --img-size 224 448 --batch 4 --threads 2

Every variant (the unmodified model first) is timed in the same rounds, each sample a burst of at least
``--min-sample`` seconds (:func:`visattn.bench.model.run_model_bench`), so the ratios compare like with like on a
busy machine too; the table marks a ratio with ``!`` where a spread exceeds a quarter of its median. The header
line says when, where (CPU, threads, load average) and at which commit the figures were measured.

    python benchmarks/models.py --against-timm visattn_vit_small_patch16_224 --threads 2

``--against-timm`` times ``visattn_*`` models (every one with a timm counterpart when no name follows) against
their timm counterparts (:func:`visattn.models.timm_counterpart`: same architecture, same weights), batch 8 at the
model's ``pretrained_cfg`` resolution unless ``--img-size``/``--batch`` say otherwise; the counterpart is the first
row and the baseline of the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch

from _common import git_commit
from visattn.bench import format_bytes, load_average
from visattn.bench.model import UNMODIFIED, ModelBenchReport, ModelBenchSettings, ModelRecord, run_model_bench

MIXERS = ("softmax", "neighborhood", "window", "axial", "linear")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def _cells(record: ModelRecord | None) -> list[str]:
    if record is None:
        return ["", "", ""]
    if record.images_per_s is None:
        return ["-", "-", f"skipped: {record.skipped}"]
    mark = " !" if record.noisy else ""
    peak = "-" if record.peak_memory_bytes is None else format_bytes(record.peak_memory_bytes)
    return [f"{record.images_per_s:.1f}", f"{record.ratio_to_unmodified:.2f}{mark}", peak]


def markdown(report: ModelBenchReport, load_before: tuple[float, ...] | None,
             ratio_header: str = "x unmodified") -> str:
    """The report as a Markdown table with a header line naming date, machine, threads, load and commit; the ratio
    column (to the first row) headed ``ratio_header``."""
    s = report.settings
    load_after = load_average()
    lines = [f"{report.model}, batch {s.batch}, {s.dtype}, {torch.get_num_threads()} threads on {_cpu()} "
             f"({os.cpu_count()} cores), {datetime.date.today().isoformat()}, commit {git_commit()}, load average "
             f"{'?' if load_before is None else f'{load_before[0]:.1f}'} before and "
             f"{'?' if load_after is None else f'{load_after[0]:.1f}'} after; median of {s.repeats} bursts of "
             f">= {s.min_sample_s:g} s, variants interleaved.", ""]
    header = ["attention", "img", "tokens"]
    for mode in s.modes:
        header += [f"{mode} img/s", ratio_header, "peak memory"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(r.label, r.img_size, r.mode): r for r in report.records}
    for label, img_size in dict.fromkeys((r.label, r.img_size) for r in report.records):
        first = next(r for r in report.records if (r.label, r.img_size) == (label, img_size))
        row = [label if label != UNMODIFIED else "unmodified (timm)", str(img_size), str(first.tokens or "-")]
        for mode in s.modes:
            row += _cells(by_key.get((label, img_size, mode)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _against_timm(names: list[str], args: argparse.Namespace, settings: ModelBenchSettings) -> None:
    """Each ``visattn_*`` model of ``names`` (all with a timm counterpart when empty) against its counterpart."""
    import timm

    import visattn.models

    names = names or [n for n in timm.list_models("visattn_*") if visattn.models.timm_counterpart(n)]
    for name in names:
        if visattn.models.timm_counterpart(name) is None:
            raise SystemExit(f"--against-timm: {name} has no timm counterpart")
        sizes = args.img_size or [timm.models.get_pretrained_cfg(name).input_size[-1]]
        load_before = load_average()
        report = run_model_bench(name, [], sizes, settings, on_record=_progress)
        if args.json:
            report.write_json(f"{args.json.removesuffix('.json')}-{name}.json")
        print(markdown(report, load_before, ratio_header="x timm"), flush=True)


def _progress(r: ModelRecord) -> None:
    print(f"  {r.label} {r.img_size} {r.mode}: {'-' if r.images_per_s is None else f'{r.images_per_s:.1f}'} img/s",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--against-timm", nargs="*", default=None, metavar="NAME",
                        help="time visattn_* models against their timm counterparts (all when no NAME)")
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS))
    parser.add_argument("--img-size", nargs="+", type=int, default=None,
                        help="image sides (default: 224 448; with --against-timm the model's resolution)")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (8 with --against-timm)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-sample", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", default=None, help="also write the records to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch = args.batch or (8 if args.against_timm is not None else 4)
    settings = ModelBenchSettings(batch=batch, repeats=args.repeats, min_sample_s=args.min_sample,
                                  backward=not args.forward_only, measure_memory=not args.no_memory)
    if args.against_timm is not None:
        _against_timm(args.against_timm, args, settings)
        return
    load_before = load_average()
    report = run_model_bench(args.model, args.mixers, args.img_size or [224, 448], settings, on_record=_progress)
    if args.json:
        report.write_json(args.json)
    print(markdown(report, load_before))


if __name__ == "__main__":
    main()
