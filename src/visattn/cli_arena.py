"""``visattn arena``: train the same small backbone with each chosen mixer on a procedural task and compare them
(results table, JSON and plots in ``--out``). Under ``torchrun --nproc-per-node N -m visattn arena ...`` it runs
data parallel (gloo on CPU, nccl on GPU); rank 0 prints, draws the progress bar and writes the files.

The training modules, timm and matplotlib are imported when the command runs, not with ``visattn --help``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_lens import model_kwargs_argument
from .cli_paths import check_output_folder

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_MIXERS = ("softmax", "linear", "neighborhood")
TASK_NAMES = ("digits", "pathfinder", "search")
DESCRIPTION = ("Train the same small ViT with each mixer on a procedural task (curve tracing, visual search, "
               "upscaled digits), test it at the training size and larger ones, and write a table and plots. "
               "Run it under torchrun for DDP.")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``arena`` subcommand to the ``visattn`` parser."""
    arena = commands.add_parser("arena", help="train and compare mixers on procedural tasks (DDP under torchrun)",
                                description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arena.add_argument("--mixers", nargs="+", metavar="MIXER", default=list(DEFAULT_MIXERS),
                       help="'name' or 'name:key=value,...' (visattn list)")
    arena.add_argument("--task", choices=TASK_NAMES, default="digits", help="the procedural task")
    arena.add_argument("--size", type=int, default=32, help="training image side in pixels")
    arena.add_argument("--eval-sizes", nargs="+", type=int, default=None, metavar="PIXELS",
                       help="test image sides (extrapolation); the training size x 1, 1.5 and 2 when left out")
    arena.add_argument("--steps", type=int, default=500, help="optimiser steps per mixer")
    arena.add_argument("--batch", type=int, default=32, help="global batch size (split over the processes)")
    arena.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    arena.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (2-d weights only)")
    arena.add_argument("--warmup", type=int, default=20, help="linear warmup steps before the cosine decay")
    arena.add_argument("--train-count", type=int, default=2000, help="training images (generated once, seeded)")
    arena.add_argument("--test-count", type=int, default=500, help="test images per test size")
    arena.add_argument("--eval-every", type=int, default=50, help="steps between test evaluations")
    arena.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    arena.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and the data")
    arena.add_argument("--model", default="visattn_vit_tiny_patch16_224",
                       help="backbone: a visattn_vit_* (shrunk to patch 4, width 64, depth 2, 2 heads) or any timm "
                            "model whose attention replace_attention can swap")
    arena.add_argument("--model-kwargs", type=model_kwargs_argument, default={},
                       help="keyword arguments for timm.create_model, e.g. embed_dim=96,depth=4")
    arena.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="autocast: auto = bf16 on GPUs that have it, fp32 on CPU")
    arena.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    arena.add_argument("--device", default=None, help="torch device (default: this rank's GPU, else the CPU)")
    arena.add_argument("--threads", type=int, default=1,
                       help="torch.set_num_threads per process: the arena's small models gain little from intra-op "
                            "threads (and lose much on a busy machine); use torchrun for more cores")
    arena.add_argument("--out", type=Path, default=Path("visattn-arena"),
                       help="output folder: results.md, results.json, plots, one folder per mixer")
    arena.add_argument("--resume", action="store_true",
                       help="continue each mixer from its checkpoint in --out (finished mixers are only evaluated)")
    arena.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard event files (needs the tensorboard package)")


def check_out(out: Path, resume: bool) -> Path:
    """``--out`` must be writable, and may hold a previous arena run only with ``--resume``."""
    from .train.arena_report import JSON_NAME

    check_output_folder(out, "--out")
    if not resume and out.is_dir() and ((out / JSON_NAME).exists() or any(out.glob("*/checkpoint.pt"))):
        raise ValueError(f"--out {str(out)!r} holds a previous arena run; pass --resume to continue it, or choose "
                         "another --out")
    return out


def _config(args: argparse.Namespace) -> Any:
    from .bench.case import parse_case
    from .tasks.procedural import extrapolation_sizes, get_task
    from .train.arena import ArenaConfig
    from .train.trainer import TrainConfig

    get_task(args.task).check_size(args.size)
    eval_sizes = tuple(args.eval_sizes or extrapolation_sizes(args.task, args.size))
    train = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                        warmup_steps=args.warmup, seed=args.seed, eval_every=args.eval_every,
                        checkpoint_every=args.checkpoint_every, precision=args.precision,
                        grad_checkpointing=args.grad_checkpointing)
    return ArenaConfig(mixers=tuple(parse_case(m) for m in args.mixers), task=args.task, size=args.size,
                       eval_sizes=eval_sizes, train_count=args.train_count, test_count=args.test_count,
                       data_seed=args.seed, model=args.model, model_kwargs=args.model_kwargs, train=train)


def _env(context: Any) -> dict[str, Any]:
    import platform

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "world_size": context.world_size,
            "backend": context.backend, "device": str(context.device), "load_average_at_end": load}


def execute(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Run ``visattn arena`` with parsed ``args``; returns the exit status."""
    check_out(args.out, args.resume)
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    config = _config(args)

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .train.arena import mixer_label, run_arena
    from .train.arena_report import rich_table, write_outputs
    from .train.distributed import init_distributed, shutdown

    torch.set_num_threads(args.threads)
    context = init_distributed(args.device)
    try:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, disable=not context.is_main) as progress:
            bars = {mixer_label(m): progress.add_task(mixer_label(m), total=config.train.steps)
                    for m in config.mixers}

            def on_record(label: str, record: dict[str, Any]) -> None:
                if record["kind"] == "train":
                    text = f"{label} loss {record['loss']:.3f}"
                else:
                    text = f"{label} acc {100 * record[f'accuracy/{config.size}']:.1f}%"
                progress.update(bars[label], completed=record["step"], description=text)

            results = run_arena(config, args.out, context=context, resume=args.resume, tensorboard=args.tensorboard,
                                on_record=on_record)
        if context.is_main:
            out.print(rich_table(config, results, context.world_size))
            paths = write_outputs(config, results, args.out, _env(context), context.world_size)
            out.print(f"table, JSON and plots written to {args.out}/ ({', '.join(p.name for p in paths)})",
                      highlight=False)
    finally:
        shutdown(context)
    return 0
