"""``visattn arena`` under ``torchrun``: the speed-up of two DDP processes over one, same global batch, same steps.

Runs the same small arena (one mixer) three ways, one after the other, and prints the training throughput (median
step, images/s) and wall time of each with the ratios to the single process:

- one process, one thread (the baseline);
- one process, two threads (intra-op parallelism: what a single process does with two cores);
- ``torchrun --nproc-per-node 2``, one thread per process (DDP over gloo).

    python benchmarks/arena_ddp.py                       # a few minutes on 2 idle cores
    python benchmarks/arena_ddp.py --steps 200 --mixer linear --task pathfinder

The loss curves of the three runs agree to float rounding (tests/train/test_distributed.py checks it); this script
only measures speed. On a shared machine the ratios move with the load, which the output reports.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _arena(prefix: list[str], threads: int, args: argparse.Namespace, out: Path) -> dict:
    command = [*prefix, "arena", "--mixers", args.mixer, "--task", args.task, "--steps", str(args.steps),
               "--batch", str(args.batch), "--eval-every", str(args.steps), "--checkpoint-every", str(args.steps),
               "--eval-sizes", "32", "--threads", str(threads), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    result = json.loads((out / "results.json").read_text())["results"][0]
    return {"images_per_s": result["images_per_s"], "train_wall_s": result["wall_s"], "process_wall_s": wall,
            "accuracy": result["accuracy"]["32"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixer", default="softmax")
    parser.add_argument("--task", default="digits")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    single = [sys.executable, "-m", "visattn"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                _free_port(), "-m", "visattn"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        runs = {"1 process x 1 thread": _arena(single, 1, args, Path(folder) / "a"),
                "1 process x 2 threads": _arena(single, 2, args, Path(folder) / "b"),
                "2 DDP processes x 1 thread": _arena(torchrun, 1, args, Path(folder) / "c")}
    base = runs["1 process x 1 thread"]
    print(f"arena {args.mixer} on {args.task}, {args.steps} steps x global batch {args.batch}; "
          f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'run':28} {'images/s':>9} {'x base':>7} {'train s':>8} {'x base':>7} {'accuracy':>9}")
    for name, run in runs.items():
        print(f"{name:28} {run['images_per_s']:9.0f} {run['images_per_s'] / base['images_per_s']:7.2f} "
              f"{run['train_wall_s']:8.1f} {base['train_wall_s'] / run['train_wall_s']:7.2f} "
              f"{100 * run['accuracy']:8.1f}%")


if __name__ == "__main__":
    main()
