"""The fused tile kernel at each ISA level this CPU runs, against dense SDPA measured in the same process.

For every level (``VISATTN_ISA``, one subprocess each, ``VISATTN_REQUIRE_NATIVE=1``) the script times, on float32
``(1, heads, N, head_dim)`` inputs (default 4 heads, head_dim 32, 2 threads), alternating samples of

- dense ``scaled_dot_product_attention`` without a mask at 128 x 128 tokens (all N^2 pairs);
- ``masked_attention(..., backend="fast")`` for the 2-D neighborhood k=7 (Hassani et al., "Neighborhood Attention
  Transformer", arXiv 2204.07143) and 8 x 8 windows (MaxViT, arXiv 2204.01697) on the same grid, forward;

and prints ``dense / neighborhood`` (how many times faster than dense) and the window's per-pair ratio
``(window time / window pairs) / (dense time / N^2)`` (1.0: as efficient per attended pair as dense SDPA). Medians of
``--repeats`` samples, each a burst of calls of at least ``--min-sample`` seconds.

    python benchmarks/isa_levels.py                    # every level this CPU runs
    python benchmarks/isa_levels.py --levels avx2 generic
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _burst(fn, min_sample: float) -> float:
    """Seconds per call over a burst of at least ``min_sample`` seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_sample:
            return elapsed / calls


def measure(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from visattn import masks
    from visattn.ops import masked_attention, native

    torch.set_num_threads(args.threads)
    side = args.side
    n = side * side
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, n, args.head_dim, generator=g) for _ in range(3))
    na, window = masks.neighborhood_mask(7), masks.window_mask(8)
    fns = {
        "dense": lambda: F.scaled_dot_product_attention(q, k, v),
        "na2d": lambda: masked_attention(q, k, v, na, (side, side), backend="fast"),
        "window8": lambda: masked_attention(q, k, v, window, (side, side), backend="fast"),
    }
    with torch.no_grad():
        for fn in fns.values():
            fn()
        samples = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                samples[name].append(_burst(fn, args.min_sample))
    t = {name: statistics.median(s) for name, s in samples.items()}
    window_pairs = n * 64
    return {"level": native.isa_level(), "vector_bytes": native.vector_bytes(),
            "ms": {name: 1e3 * x for name, x in t.items()},
            "na2d_speedup": t["dense"] / t["na2d"],
            "window8_per_pair": (t["window8"] / window_pairs) / (t["dense"] / (n * n)),
            "load": os.getloadavg() if hasattr(os, "getloadavg") else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", nargs="*", default=None, help="default: every level this CPU runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-sample", type=float, default=0.2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    from visattn.ops import native

    levels = args.levels or list(native.cpu_levels())
    print(f"{'level':8} {'vector':>6} {'dense ms':>9} {'na2d ms':>8} {'dense/na2d':>10} {'window8 ms':>10} "
          f"{'window8 per pair':>16}  load")
    for level in levels:
        env = {**os.environ, "VISATTN_ISA": level, "VISATTN_REQUIRE_NATIVE": "1"}
        child = [a for a in sys.argv[1:] if a != "--levels" and a not in (args.levels or [])]
        done = subprocess.run([sys.executable, __file__, "--child", *child], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{level:8} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        load = "/".join(f"{x:.1f}" for x in r["load"]) if r["load"] else "-"
        print(f"{r['level']:8} {r['vector_bytes']:>6} {r['ms']['dense']:>9.1f} {r['ms']['na2d']:>8.2f} "
              f"{r['na2d_speedup']:>10.1f} {r['ms']['window8']:>10.2f} {r['window8_per_pair']:>16.2f}  {load}")


if __name__ == "__main__":
    main()
