"""Fixed per-call cost of the local mixers on the CPU: the custom-operator path against the direct path, one run.

An 8 x 8 grid (64 tokens, 4 heads of 32, batch 1, float32) costs little work, so a call's time there is mostly
its fixed cost: argument checks, the dispatch, and reaching the kernel. Each case is timed two ways in interleaved
bursts (``visattn.bench.time_burst``, one burst of each per round, so both see the same machine load):

- ``custom op``: every call through ``torch.ops.visattn.progression_attention`` (forced with
  ``visattn.ops.engines.direct.direct_calls(False)``), as before the direct path existed;
- ``direct``: the default path (in eager inference the kernel is called directly with a cached plan,
  :mod:`visattn.ops.engines.direct`).

Also timed in the same rounds: ``kernel``, the ctypes call alone with every argument prepared (the floor any Python
path pays). Cases: the ``neighborhood`` mixer (k = 7) and the ``window`` mixer (8 x 8, one window) as
``visattn bench`` times them (``q, k, v`` given), and ``NeighborhoodAttention2d`` (dim 128, 4 heads, k = 7; its
projections included, so its ratio is smaller).

Prints, per case, the median milliseconds per call of each path, wall and CPU time (all threads: on a loaded machine
the CPU time moves less than the wall time), and the ratio custom op / direct of each (median of the per-round
ratios) with its interquartile range. ``python benchmarks/fixed_cost.py`` (``--threads 2`` by default).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from visattn import create_mixer
from visattn.bench import calls_per_sample, time_burst
from visattn.nn import NeighborhoodAttention2d
from visattn.ops import native
from visattn.ops.engines import direct

GRID = (8, 8)
HEADS, HEAD_DIM = 4, 32


def forced_op(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with the direct path off (every kernel call through the custom operator)."""

    def run() -> object:
        with direct.direct_calls(False):
            return fn()

    return run


def kernel_alone(mask_key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], object]:
    """The fused tile kernel's ctypes call with every argument prepared once (output written into one buffer)."""
    plan = direct.forward_plan(mask_key, GRID, 0, "fused_tiles", q.dtype)
    out = torch.empty(*q.shape[:3], v.shape[-1])
    pointers = [t.data_ptr() for t in (q, k, v, out)]
    strides = [native.stride_array(t.stride()) for t in (q, k, v, out)]
    batch, heads, _, dim = q.shape
    threads = torch.get_num_threads()

    def run() -> torch.Tensor:
        plan.function(*pointers, None, batch, heads, dim, v.shape[-1], *strides, strides[-1], *plan.fixed,
                      dim**-0.5, threads)
        return out  # keeps the buffer the pointers name alive as long as run

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-sample", type=float, default=0.1, help="seconds of consecutive calls per sample")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = GRID[0] * GRID[1]
    q, k, v = torch.randn(3, 1, tokens, HEADS, HEAD_DIM).transpose(2, 3).unbind(0)  # as a qkv projection gives
    neighborhood = create_mixer("neighborhood", kernel_size=7).eval()
    window = create_mixer("window", window_size=8).eval()
    module = NeighborhoodAttention2d(HEADS * HEAD_DIM, HEADS, 7).eval()
    x = torch.randn(1, *GRID, HEADS * HEAD_DIM)
    cases = {
        "neighborhood (k=7)": (lambda: neighborhood(q, k, v, GRID), neighborhood.mask.key),
        "window (8x8)": (lambda: window(q, k, v, GRID), window.mask.key),
        "NeighborhoodAttention2d": (lambda: module(x), None),
    }
    print(f"fixed cost on a {GRID[0]}x{GRID[1]} grid, {HEADS} heads of {HEAD_DIM}, batch 1, float32, "
          f"{args.threads} threads; medians of {args.repeats} interleaved samples, ms per call wall (CPU time of "
          f"all threads in brackets); ratio = median of the per-round ratios, IQR after it")
    with torch.no_grad():
        for name, (fn, mask_key) in cases.items():
            torch.testing.assert_close(fn(), forced_op(fn)(), rtol=0, atol=0)
            fns = {"custom op": forced_op(fn), "direct": fn}
            if mask_key:
                fns["kernel alone"] = kernel_alone(mask_key, q, k, v)
            wall, cpu = interleaved(fns, args.repeats, args.min_sample)
            paths = ", ".join(f"{path} {statistics.median(wall[path]):.4f} ({statistics.median(cpu[path]):.4f})"
                              for path in fns)
            print(f"{name:24s} {paths}; custom op / direct: wall {ratio(wall)}, CPU {ratio(cpu)}")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, min_sample_s: float
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU milliseconds per call of each function, ``repeats`` samples each, one burst of each per round."""
    for fn in fns.values():
        fn()
    calls = {name: calls_per_sample(time_burst(fn, 20)[0], min_sample_s) for name, fn in fns.items()}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time_burst(fn, calls[name])
            wall[name].append(1e3 * w)
            cpu[name].append(1e3 * c)
    return wall, cpu


def ratio(samples: dict[str, list[float]]) -> str:
    """Median and interquartile range of the per-round ratios custom op / direct."""
    ratios = [a / b for a, b in zip(samples["custom op"], samples["direct"], strict=True)]
    low, mid, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{mid:.2f}x (IQR {low:.2f}-{high:.2f})"


if __name__ == "__main__":
    main()
