"""The run context the model benchmarks print before they measure: the torch threads they use, the library versions,
the commit measured and the machine load (a shared machine makes timings slow and noisy).

The benchmarks run as scripts from ``benchmarks/`` (``python benchmarks/<name>.py``), so they import this module as
``_common``.
"""

from __future__ import annotations

import os
import subprocess

import timm
import torch

from visattn.bench import busy_message, load_average

__all__ = ["git_commit", "run_header", "set_threads"]


def git_commit() -> str:
    """The short hash of the checked-out commit of this repository, or ``"unknown"`` when git cannot tell."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def set_threads(threads: int) -> None:
    """Run torch on ``threads`` threads and print :func:`visattn.bench.busy_message`'s warning when the machine's
    load leaves too few cores for them."""
    torch.set_num_threads(threads)
    load = load_average()
    warning = busy_message(load[0] if load else None, os.cpu_count(), threads)
    if warning:
        print(warning)


def run_header(threads: int, batch: int, rounds: int | None = None) -> str:
    """``"torch <v>, timm <v>, <threads> threads, batch <batch>, [<rounds> rounds, ]load average before <load>"``."""
    counted = f"{rounds} rounds, " if rounds is not None else ""
    return (f"torch {torch.__version__}, timm {timm.__version__}, {threads} threads, batch {batch}, {counted}"
            f"load average before {load_average()}")
