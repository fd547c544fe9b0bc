"""Learned/structured sparse mixers against dense SDPA: time relative to dense vs the density used.

Mixers: Sparsifiner's sparse execution (Wei et al., arXiv 2303.13755; predictor + gathered top-k keys,
k = ceil(0.25 N)) and PAROAttention's block-sparse execution (Zhao et al., arXiv 2506.16054; 64-token blocks,
densities 0.25 and 0.5, without fake quantisation, which costs time on a CPU rather than saving it). Forward only,
inference mode, ``(1, heads, N, d)`` float32, 4 heads, d = 32. Target: time / dense time <= 2 x density.

Each row prints the ratio measured in this run against ``scaled_dot_product_attention`` on the same inputs.

    python benchmarks/reformulated_sparse.py                        # N = 1024, 4096, 16384
    python benchmarks/reformulated_sparse.py --sizes 1024 --repeats 2
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from visattn.bench.timing import summarize, synchronizer, time_call
from visattn.nn.sparsifiner import SparsifinerMixer
from visattn.ops.paro_attention import paro_block_sparse_attention


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    sync = synchronizer(torch.device("cpu"))
    fn()
    return summarize([1e3 * time_call(fn, sync) for _ in range(repeats)]).median_ms


def paro_bitmap(heads: int, tokens: int, block: int, density: float, seed: int) -> torch.Tensor:
    """A random static bitmap with ``ceil(density nb)`` key blocks per query-block row (diagonal always kept)."""
    nb = -(-tokens // block)
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(heads, nb, nb, generator=gen) + 2 * torch.eye(nb)
    idx = score.topk(max(1, math.ceil(density * nb)), dim=-1)[1]
    return torch.zeros(heads, nb, nb, dtype=torch.bool).scatter(-1, idx, True)


def rows_for_size(n: int, heads: int, head_dim: int, repeats: int) -> list[tuple[str, float, float, float]]:
    """``(mixer, density, dense ms, mixer ms)`` for one token count N."""
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen) for _ in range(3))
    side = math.isqrt(n)
    shape = (side, n // side) if side * (n // side) == n else (n,)
    rows = []
    with torch.inference_mode():
        dense = median_ms(partial(F.scaled_dot_product_attention, q, k, v), repeats)
        mixer = SparsifinerMixer(num_heads=heads, head_dim=head_dim, num_tokens=n).eval()
        kept = mixer.keys_per_query / n
        rows.append(("sparsifiner (predict + attend)", kept, dense, median_ms(partial(mixer, q, k, v, shape), repeats)))
        idx = mixer.key_indices(q, k, shape)
        attend = partial(mixer._gathered_attention, q, k, v, idx)
        rows.append(("sparsifiner (attend only)", kept, dense, median_ms(attend, repeats)))
        for density in (0.25, 0.5):
            bitmap = paro_bitmap(heads, n, 64, density, seed=n)
            fn = partial(paro_block_sparse_attention, q, k, v, bitmap, 64)
            rows.append((f"paro block-sparse {density}", float(bitmap.float().mean()), dense, median_ms(fn, repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = Table(title=f"sparse mixers vs dense SDPA ({args.heads} heads, d={args.head_dim}, fp32, "
                        f"{args.threads} threads)")
    for col in ("mixer", "N", "density", "dense ms", "mixer ms", "time / dense", "target <=", "met"):
        table.add_column(col, justify="right")
    for n in args.sizes:
        for name, density, dense, ms in rows_for_size(n, args.heads, args.head_dim, args.repeats):
            ratio = ms / dense
            table.add_row(name, str(n), f"{density:.3f}", f"{dense:.1f}", f"{ms:.1f}", f"{ratio:.3f}",
                          f"{2 * density:.3f}", "yes" if ratio <= 2 * density else "no")
    Console().print(table)


if __name__ == "__main__":
    main()
