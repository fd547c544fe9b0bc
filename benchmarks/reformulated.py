"""Linear-family mixers against dense SDPA: time and peak memory against N, fitted exponents, ratios at the top N.

Mixers: ``linear`` (Katharopoulos et al., arXiv 2006.16236), ``hedgehog`` (arXiv 2402.04347), ``inline``
(arXiv 2412.06590, with its local residual), ``l2vit_linear`` (arXiv 2501.16182) and ``linear_infsa``
(arXiv 2603.00175). Each runs forward in inference mode on ``(1, heads, N, d)`` float32 tensors laid out on a
square grid, for N from 1,024 to 65,536 (4 heads, d = 32, 2 threads by default). Reported per mixer:

- forward time (median and minimum of ``--repeats`` calls) and peak memory (bytes allocated during the call,
  from the torch profiler) per N, and the least-squares exponent of each against N (target <= 1.15). Fits and
  ratios use the minimum time, the estimate least disturbed by other jobs on a shared machine;
- the time ratio to dense ``scaled_dot_product_attention`` at the largest N (target >= 50x). SDPA is measured up
  to ``--sdpa-max`` tokens; above that its time is extrapolated with ``t = c N^2`` through the largest measured
  size, and the output says so;
- peak memory over the bytes of dense attention's N x N float32 score matrix (``heads N^2 4``; target <= 1/20).
  PyTorch's CPU SDPA is a fused kernel that never holds those scores, so its own measured peak is shown too.

Timings on a shared machine vary; the script prints ratios measured in one run, never bare claims.

    python benchmarks/reformulated.py                       # defaults above
    python benchmarks/reformulated.py --sizes 1024 4096 --repeats 2
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import visattn
from visattn.bench.fit import fit_exponent
from visattn.bench.memory import peak_memory_bytes
from visattn.bench.timing import summarize, synchronizer, time_call

LINEAR_FAMILY = ("linear", "hedgehog", "inline", "l2vit_linear", "linear_infsa")
TARGET_EXPONENT, TARGET_SPEEDUP, TARGET_MEMORY = 1.15, 50.0, 1 / 20


@dataclass
class Measurement:
    tokens: int
    median_ms: float
    min_ms: float
    peak_bytes: int | None


def measure(fn: Callable[[], object], repeats: int) -> Measurement:
    """Median and minimum time of ``repeats`` calls after one warm-up, and the peak memory of one more call."""
    sync = synchronizer(torch.device("cpu"))
    fn()
    timing = summarize([1e3 * time_call(fn, sync) for _ in range(repeats)])
    return Measurement(0, timing.median_ms, timing.min_ms, peak_memory_bytes(fn))


def inputs(tokens: int, heads: int, head_dim: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, tokens, head_dim, generator=gen) for _ in range(3))
    x = torch.randn(1, tokens, heads * head_dim, generator=gen)
    return {"q": q, "k": k, "v": v, "x": x}


def mixer_call(name: str, data: dict[str, torch.Tensor], heads: int, head_dim: int) -> Callable[[], object]:
    mixer = visattn.create_mixer_for_layer(name, dim=heads * head_dim, num_heads=heads, head_dim=head_dim).eval()
    side = math.isqrt(data["q"].shape[2])
    extra = {"x": data["x"]} if mixer.uses_input else {}

    def call() -> object:
        with torch.inference_mode():
            return mixer(data["q"], data["k"], data["v"], (side, side), **extra)

    return call


def sdpa_call(data: dict[str, torch.Tensor]) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return F.scaled_dot_product_attention(data["q"], data["k"], data["v"])

    return call


def megabytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", default=list(LINEAR_FAMILY))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 4096, 16384, 65536],
                        help="token counts, each a perfect square (the grid is square)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sdpa-max", type=int, default=16384,
                        help="largest N at which dense SDPA is run; above it its time is extrapolated as c N^2")
    args = parser.parse_args(argv)
    for n in args.sizes:
        if math.isqrt(n) ** 2 != n:
            parser.error(f"--sizes must be perfect squares (square grids), got {n}")
    for name in args.mixers:
        visattn.get_mixer_spec(name)
    sizes = sorted(args.sizes)
    torch.set_num_threads(args.threads)
    console = Console()
    console.print(f"forward, float32, B=1, heads={args.heads}, d={args.head_dim}, threads={args.threads}, "
                  f"repeats={args.repeats}; fits and ratios use the minimum time")

    results: dict[str, list[Measurement]] = {name: [] for name in [*args.mixers, "sdpa"]}
    for n in sizes:
        data = inputs(n, args.heads, args.head_dim, seed=n)
        for name in args.mixers:
            m = measure(mixer_call(name, data, args.heads, args.head_dim), args.repeats)
            m.tokens = n
            results[name].append(m)
        if n <= args.sdpa_max:
            m = measure(sdpa_call(data), args.repeats)
            m.tokens = n
            results["sdpa"].append(m)
        console.print(f"  N={n:,} done")

    sdpa = results["sdpa"]
    if not sdpa:
        parser.error(f"--sdpa-max {args.sdpa_max} is below every size; SDPA must run at one size at least")
    top = sizes[-1]
    base = sdpa[-1]
    sdpa_top_ms = base.min_ms * (top / base.tokens) ** 2
    extrapolated = base.tokens != top
    sdpa_exponent = fit_exponent([m.tokens for m in sdpa], [m.min_ms for m in sdpa]) if len(sdpa) > 1 else None

    detail = Table(title="Forward time and peak memory per N")
    for column in ("mixer", "N", "median ms", "min ms", "peak MB", "dense SDPA min ms", "speedup vs SDPA",
                   "peak / dense N^2 scores"):
        detail.add_column(column, justify="right" if column != "mixer" else "left")
    sdpa_at = {m.tokens: m for m in sdpa}
    for name in [*args.mixers, "sdpa"]:
        for m in results[name]:
            scores = args.heads * m.tokens**2 * 4
            ref = sdpa_at.get(m.tokens)
            ref_ms = ref.min_ms if ref else base.min_ms * (m.tokens / base.tokens) ** 2
            ref_text = f"{ref_ms:,.1f}" + ("" if ref else " (extrap.)")
            ratio = "n/a" if m.peak_bytes is None else f"1/{scores / max(m.peak_bytes, 1):,.0f}"
            detail.add_row(name, f"{m.tokens:,}", f"{m.median_ms:,.2f}", f"{m.min_ms:,.2f}", megabytes(m.peak_bytes),
                           ref_text, f"{ref_ms / m.min_ms:,.1f}x", ratio)
    console.print(detail)

    summary = Table(title=f"Linear family at N={top:,}: targets exponent <= {TARGET_EXPONENT}, "
                          f">= {TARGET_SPEEDUP:.0f}x faster than dense SDPA, "
                          f"peak <= 1/{1 / TARGET_MEMORY:.0f} of the N^2 scores")
    for column in ("mixer", "time exponent", "memory exponent", f"speedup vs SDPA at {top:,}",
                   "peak / N^2 scores", "targets"):
        summary.add_column(column, justify="right" if column != "mixer" else "left")
    scores_top = args.heads * top**2 * 4
    for name in args.mixers:
        ms = results[name]
        t_exp = fit_exponent([m.tokens for m in ms], [m.min_ms for m in ms])
        peaks = [m.peak_bytes for m in ms]
        m_exp = fit_exponent([m.tokens for m in ms], peaks) if all(p for p in peaks) else None
        speedup = sdpa_top_ms / ms[-1].min_ms
        memory = (ms[-1].peak_bytes or 0) / scores_top
        met = (t_exp is not None and t_exp <= TARGET_EXPONENT and speedup >= TARGET_SPEEDUP
               and ms[-1].peak_bytes is not None and memory <= TARGET_MEMORY)
        summary.add_row(name, "n/a" if t_exp is None else f"{t_exp:.3f}", "n/a" if m_exp is None else f"{m_exp:.3f}",
                        f"{speedup:,.0f}x", f"{memory:.2e}", "met" if met else "NOT met")
    console.print(summary)
    how = (f"extrapolated as c N^2 from its measured {base.min_ms:,.1f} ms at N={base.tokens:,}"
           if extrapolated else "measured")
    console.print(f"dense SDPA at N={top:,}: {sdpa_top_ms:,.0f} ms ({how}); its fitted time exponent over the "
                  f"measured sizes is {'n/a' if sdpa_exponent is None else f'{sdpa_exponent:.2f}'}. "
                  "Timings were taken on a machine shared with other jobs.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
