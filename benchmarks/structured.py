"""Structured attention on its fast paths against dense SDPA and compiled FlexAttention, ratios in one run.

Neighborhood attention in 1-3 dims, MaxViT window / grid (arXiv 2204.01697), HaloNet (arXiv 2103.12731), axial,
sliding-window and Radial Attention (arXiv 2506.19852). Two engines after Faster Neighborhood Attention
(arXiv 2403.04690): the fused tile kernel (:mod:`visattn.ops.engines.fused_tiles`, register-blocked tiles with an
online softmax, forward and backward) and batched SDPA over tiles, lines or blocks
(:mod:`visattn.ops.engines.sdpa_tiles`, :mod:`~visattn.ops.engines.lines`, :mod:`~visattn.ops.engines.block_sparse`;
the fallback). For each case, on ``(B, heads, N, head_dim)`` float32 inputs (default B = 1, 4 heads, head_dim 32,
2 threads), the script prints median wall time of

- the fast path, ``masked_attention(..., backend="fast")`` (the ``path`` column says which engine ran);
- the SDPA engine for the same structure (``backend="sdpa_tiles"``; ``"sdpa_lines"`` for axial masks, the SDPA
  block plan for radial masks), so that both are measured in the same run;
- dense ``scaled_dot_product_attention`` without a mask (all N^2 pairs: the speed reference) and, where N^2 fits,
  with the mask's bool matrix (the exact dense alternative);
- for the 2-D neighborhood, FlexAttention compiled with the same mask (block-mask build and compile times are
  reported separately and excluded from its median);

useful GFLOP/s (``4 * attended_pairs * head_dim * heads * B``, forward; 3x that for forward + backward), the scores
each engine computes per attended pair, peak bytes one fast call allocates, and the ratio lines of issue 3's
targets. Baselines and the fast path are timed alternately so that load on a shared machine hits both; CPU time
(all threads) is printed too. Each timing sample is a burst of consecutive calls of at least ``--min-sample``
seconds (timeit's autorange): timed alone, a call of a few milliseconds right after a one-second dense call measured
up to 1.5x slower than in a burst, the machine's clock and caches still adjusting. Dense SDPA, at hundreds of
milliseconds per call, is one call per sample either way.

    python benchmarks/structured.py                  # all cases, about 5-10 minutes on 2 busy cores
    python benchmarks/structured.py --threads 1      # the same at one thread
    python benchmarks/structured.py --quick          # smaller sizes, no FlexAttention compile
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from visattn import masks
from visattn.bench import calls_per_sample, peak_memory_bytes, summarize, time_burst
from visattn.masks import Mask
from visattn.ops import explain, masked_attention, run_flex_attention, sdpa_bool_mask, tile_plan
from visattn.ops.engines.block_sparse import block_sparse_plan, default_blocks, run_block_sparse_plan
from visattn.ops.engines.dense import dense_mask
from visattn.ops.engines.fused_tiles import progression_tiles
from visattn.ops.engines.layout import local_layout


@dataclass
class Case:
    """One benchmark case: ``mask`` on ``shape``; ``kind`` says which target lines it feeds."""

    name: str
    mask: Mask
    shape: tuple[int, ...]
    kind: str
    backward: bool = False
    flex: bool = False


@dataclass
class Result:
    case: Case
    pairs: int
    path: str = "tiles"
    times: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def cases(quick: bool) -> list[Case]:
    side, seq, t3 = (64, 16384, (8, 16, 16)) if quick else (128, 65536, (16, 32, 32))
    radial = (8, 1024) if quick else (32, 1024)
    return [
        Case("neighborhood 2-D k=7", masks.neighborhood_mask(7), (side, side), "na2d", flex=not quick),
        Case("neighborhood 2-D k=7 fwd+bwd", masks.neighborhood_mask(7), (side, side), "na2d_bwd", backward=True),
        Case("neighborhood 1-D k=257", masks.neighborhood_mask(257), (seq,), "na1d"),
        Case("neighborhood 3-D k=(3,7,7)", masks.neighborhood_mask((3, 7, 7)), t3, "na3d"),
        Case("window P=8", masks.window_mask(8), (side, side), "pair"),
        Case("window P=8 fwd+bwd", masks.window_mask(8), (side, side), "train", backward=True),
        Case("window P=7 (MaxViT)", masks.window_mask(7), (side - side // 8, side - side // 8), "pair"),
        Case("window P=16", masks.window_mask(16), (side, side), "pair"),
        Case("grid G=8", masks.grid_mask(8), (side, side), "pair"),
        Case("grid G=8 fwd+bwd", masks.grid_mask(8), (side, side), "train", backward=True),
        Case("grid G=16", masks.grid_mask(16), (side, side), "pair"),
        Case("axial (rows)", masks.axial_mask(1), (side, side), "pair"),
        Case("halo b=8 h=3", masks.halo_mask(8, 3), (side, side), "pair"),
        Case("sliding w=257", masks.sliding_window_mask(257), (seq,), "info"),
        Case("sliding w=257 causal", masks.sliding_window_mask(257, is_causal=True), (seq,), "info"),
        Case("radial (paper rule)", masks.radial_mask("paper"), radial, "radial"),
        Case("radial (code rule)", masks.radial_mask("code"), radial, "radial"),
    ]


def alternate(fns: dict[str, Callable[[], object]], repeats: dict[str, int],
              min_sample_s: float) -> tuple[dict, dict]:
    """Median wall and CPU ms per call of each function, rounds interleaved. Each sample is a burst of consecutive
    calls lasting at least ``min_sample_s`` (sized from one warm-up call), except for functions timed once."""
    calls = {}
    for key, fn in fns.items():
        calls[key] = calls_per_sample(time_burst(fn, 1)[0], min_sample_s) if repeats[key] > 1 else 1
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(repeats.values())):
        for key, fn in fns.items():
            if r < repeats[key]:
                wall, cpu = time_burst(fn, calls[key])
                walls[key].append(wall * 1e3)
                cpus[key].append(cpu * 1e3)
    return ({k: summarize(v).median_ms for k, v in walls.items()},
            {k: summarize(v).median_ms for k, v in cpus.items()})


def run_case(case: Case, args: argparse.Namespace, console: Console) -> Result:
    n = math.prod(case.shape)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, n, args.head_dim, generator=gen) for _ in range(3))
    result = Result(case, case.mask.pair_count(case.shape))
    if case.kind == "radial":
        blocks = default_blocks(case.mask, case.shape)
        block_plan = block_sparse_plan(case.mask, case.shape, 0, *blocks)
        result.notes.append(f"blocks {blocks}: computed scores / N^2 = {block_plan.block_density:.3f}, "
                            f"mask density {result.pairs / n**2:.3f}")
    if case.kind != "radial":
        plan = tile_plan(case.mask, case.shape)
        result.notes.append(f"plan {plan.describe()}; key rows/bh={plan.key_rows}, mask elements={plan.mask_elements}")
    if case.kind != "radial":
        layout = local_layout(case.mask, case.shape)
        tiles_list = progression_tiles(layout, 0) if layout is not None else None
        if tiles_list is not None:
            result.notes.append(f"fused tiles {tiles_list.tile_sizes}: scores / attended pairs = "
                                f"{tiles_list.score_elements / result.pairs:.2f}")
    result.path = explain(case.mask, case.shape, requires_grad=case.backward, backend="fast").engine

    def fast() -> torch.Tensor:
        return masked_attention(q, k, v, case.mask, case.shape, backend="fast")

    def alternative(*args: torch.Tensor) -> torch.Tensor:
        """The SDPA engine of the same structure: tiles, lines for axial masks, blocks for radial masks."""
        if case.kind == "radial":
            return run_block_sparse_plan(block_sparse_plan(case.mask, case.shape, 0, *default_blocks(
                case.mask, case.shape)), *args)
        backend = "sdpa_lines" if isinstance(case.mask, masks.AxialMask) else "sdpa_tiles"
        return masked_attention(*args, case.mask, case.shape, backend=backend)

    def tiles() -> torch.Tensor:
        return alternative(q, k, v)

    def dense() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)

    fns: dict[str, Callable[[], object]] = {"fast": fast, "tiles": tiles, "dense": dense}
    repeats = {"fast": args.repeats, "tiles": args.repeats,
               "dense": max(1, args.repeats // 2) if n <= 16384 else 1}
    if case.backward:
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        grad = torch.randn_like(q)

        def fast_bwd() -> None:
            out = masked_attention(*leaves, case.mask, case.shape, backend="fast")
            torch.autograd.grad(out, leaves, grad)

        def tiles_bwd() -> None:
            out = alternative(*leaves)
            torch.autograd.grad(out, leaves, grad)

        def dense_bwd() -> None:
            out = F.scaled_dot_product_attention(*leaves)
            torch.autograd.grad(out, leaves, grad)

        fns = {"fast": fast_bwd, "tiles": tiles_bwd, "dense": dense_bwd}
        repeats = {"fast": args.repeats, "tiles": args.repeats, "dense": 1}
    elif n <= args.masked_dense_max:
        allowed = dense_mask(case.mask, case.shape, 0, q.device)
        fns["dense_masked"] = lambda: sdpa_bool_mask(q, k, v, allowed)
        repeats["dense_masked"] = max(1, args.repeats // 2)
    if case.flex:
        start = time.perf_counter()
        block = masks.to_block_mask(case.mask, case.shape)
        result.notes.append(f"FlexAttention block mask built in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        run_flex_attention(q, k, v, block)
        result.notes.append(f"FlexAttention compiled (first call) in {time.perf_counter() - start:.1f} s")
        fns["flex"] = lambda: run_flex_attention(q, k, v, block)
        repeats["flex"] = max(1, args.repeats // 2)
    console.log(f"{case.name} {case.shape}: timing {', '.join(fns)}")
    result.times, result.cpu = alternate(fns, repeats, args.min_sample)
    if not case.backward:
        with torch.no_grad():
            peak = peak_memory_bytes(fast)
        if peak is not None:
            result.notes.append(f"fast path peak allocation {peak / 2**20:.1f} MiB "
                                f"(q, k, v: {3 * q.numel() * q.element_size() / 2**20:.1f} MiB)")
    return result


def gflops(pairs: int, ms: float, args: argparse.Namespace, backward: bool) -> float:
    return 4 * pairs * args.head_dim * args.heads * args.batch * (3 if backward else 1) / (ms * 1e-3) / 1e9


def report(results: list[Result], args: argparse.Namespace, console: Console) -> None:
    table = Table(title=f"fast paths vs dense SDPA, {args.threads} thread(s), B={args.batch}, "
                        f"heads={args.heads}, head_dim={args.head_dim}, float32 (median wall ms)")
    for col in ("case", "shape", "path", "fast ms", "SDPA engine ms", "dense ms", "dense+mask ms", "flex ms", "x dense",
                "x dense (cpu)", "x SDPA engine", "useful GF/s", "dense GF/s"):
        table.add_column(col, justify="right" if col not in ("case", "shape", "path") else "left")
    for r in results:
        n = math.prod(r.case.shape)
        t = r.times
        table.add_row(
            r.case.name, "x".join(map(str, r.case.shape)), r.path, f"{t['fast']:.1f}", f"{t['tiles']:.1f}",
            f"{t['dense']:.0f}", f"{t['dense_masked']:.0f}" if "dense_masked" in t else "-",
            f"{t['flex']:.1f}" if "flex" in t else "-",
            f"{t['dense'] / t['fast']:.1f}", f"{r.cpu['dense'] / r.cpu['fast']:.1f}", f"{t['tiles'] / t['fast']:.2f}",
            f"{gflops(r.pairs, t['fast'], args, r.case.backward):.1f}",
            f"{gflops(n * n, t['dense'], args, r.case.backward):.1f}")
    console.print(table)
    for r in results:
        for note in r.notes:
            console.print(f"[dim]{r.case.name}: {note}[/dim]")
    targets = Table(title="issue 3 targets (ratios measured in this run)")
    for col in ("target", "measured", "met"):
        targets.add_column(col)

    def line(label: str, value: float, goal: float, fmt: str, higher: bool = True) -> None:
        met = value >= goal if higher else value <= goal
        targets.add_row(label, fmt.format(value), "yes" if met else "NO")

    for r in results:
        t, n = r.times, math.prod(r.case.shape)
        kind = r.case.kind
        if kind == "na2d":
            line("2-D NA fwd: x faster than dense SDPA (>= 20)", t["dense"] / t["fast"], 20, "{:.1f}x")
            if "dense_masked" in t:
                line("2-D NA fwd: x faster than dense SDPA + bool mask (>= 20)", t["dense_masked"] / t["fast"], 20,
                     "{:.1f}x")
            if "flex" in t:
                line("2-D NA fwd: x faster than compiled FlexAttention (>= 5)", t["flex"] / t["fast"], 5, "{:.1f}x")
            share = gflops(r.pairs, t["fast"], args, False) / gflops(n * n, t["dense"], args, False)
            line("2-D NA fwd: useful GFLOP/s / dense SDPA GFLOP/s (>= 15%)", 100 * share, 15, "{:.1f}%")
        elif kind == "na2d_bwd":
            line("2-D NA fwd+bwd: x faster than dense SDPA (>= 10)", t["dense"] / t["fast"], 10, "{:.1f}x")
        elif kind in ("na1d", "na3d"):
            line(f"{r.case.name} fwd: x faster than dense SDPA (>= 10)", t["dense"] / t["fast"], 10, "{:.1f}x")
        elif kind == "radial":
            density = r.pairs / (n * n)
            line(f"{r.case.name}: time / dense SDPA's (<= 2 x density {density:.3f})", t["fast"] / t["dense"],
                 2 * density, "{:.3f}", higher=False)
        elif kind == "pair":
            per_pair = (t["fast"] / r.pairs) / (t["dense"] / (n * n))
            line(f"{r.case.name}: time per attended pair / dense SDPA's (<= 1.5)", per_pair, 1.5, "{:.2f}",
                 higher=False)
    console.print(targets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="timing samples per function")
    parser.add_argument("--min-sample", type=float, default=0.1,
                        help="seconds of consecutive calls per timing sample (0: one call each)")
    parser.add_argument("--masked-dense-max", type=int, default=16384,
                        help="largest N for dense SDPA with the materialised bool mask")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and no FlexAttention compile")
    parser.add_argument("--only", nargs="*", default=None, help="case kinds to run (na2d, na2d_bwd, na1d, ...)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    selected = [c for c in cases(args.quick) if args.only is None or c.kind in args.only]
    results = [run_case(case, args, console) for case in selected]
    report(results, args, console)


if __name__ == "__main__":
    main()
