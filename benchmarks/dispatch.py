"""The engine layer as users meet it, ratios measured in one run (issue 11's module-level targets).

Three comparisons, each timed in interleaved bursts (``visattn.bench.time_burst``, each sample at least
``--min-sample`` seconds of consecutive calls), median of ``--repeats`` samples:

1. ``NeighborhoodAttention2d`` (the NATTEN-style module) against ``visattn.Attention(mixer="neighborhood")`` on the
   same sizes (64 x 64 tokens, dim 128, 4 heads): both go through the dispatch, so the ratio should be about 1.
2. ViT-S/16 attention (dim 384, 6 heads, batch 8, a class token) with ``neighborhood`` (k = 7) and ``window`` (7)
   against ``softmax`` at 14 x 14 and 28 x 28 tokens, whole module (projections included).
3. A network of neighborhood, window and halo modules eager against ``torch.compile`` (the kernels are custom
   operators, kept in the compiled graph), and ``torch._dynamo.explain``'s graph-break count.

Run on an idle machine: ``python benchmarks/dispatch.py`` (``--threads 2`` by default).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import nn

import visattn
from visattn.bench import calls_per_sample, time_burst
from visattn.nn import NeighborhoodAttention2d


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, min_sample_s: float) -> dict[str, float]:
    """Median milliseconds per call of each function, samples taken in rounds over all of them."""
    calls = {name: calls_per_sample(time_burst(fn, 1)[0], min_sample_s) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_burst(fn, calls[name])[0] * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


class StructuredNet(nn.Module):
    """Neighborhood, window and halo attention in a residual stack on a 32 x 32 token grid."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            visattn.Attention(dim, num_heads=heads, mixer="neighborhood", kernel_size=7),
            visattn.Attention(dim, num_heads=heads, mixer="window", window_size=8),
            visattn.Attention(dim, num_heads=heads, mixer="halo", block_size=8, halo_size=3),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-sample", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with torch.no_grad():
        na = NeighborhoodAttention2d(128, 4, 7).eval()
        attn = visattn.Attention(128, num_heads=4, mixer="neighborhood", kernel_size=7).eval()
        x = torch.randn(1, 64, 64, 128)
        t = interleaved({"NeighborhoodAttention2d": lambda: na(x),
                         "Attention(neighborhood)": lambda: attn(x.reshape(1, 4096, 128))}, args.repeats,
                        args.min_sample)
        print(f"1. 64x64, dim 128, 4 heads: NeighborhoodAttention2d {t['NeighborhoodAttention2d']:.2f} ms, "
              f"Attention(neighborhood) {t['Attention(neighborhood)']:.2f} ms, "
              f"ratio {t['NeighborhoodAttention2d'] / t['Attention(neighborhood)']:.3f} (target <= 1.05)")

        mixers = {"softmax": {}, "neighborhood": {"kernel_size": 7}, "window": {"window_size": 7}}
        modules = {name: visattn.Attention(384, num_heads=6, qkv_bias=True, mixer=name, num_prefix_tokens=1,
                                           **kw).eval() for name, kw in mixers.items()}
        for side in (14, 28):
            tokens = torch.randn(8, 1 + side * side, 384)
            t = interleaved({name: (lambda m=m, x=tokens: m(x)) for name, m in modules.items()}, args.repeats,
                            args.min_sample)
            ratios = ", ".join(f"{name} / softmax {t[name] / t['softmax']:.3f}" for name in ("neighborhood", "window"))
            print(f"2. ViT-S attention at {side}x{side} + class token, batch 8: softmax {t['softmax']:.2f} ms; "
                  f"{ratios}")

        net = StructuredNet().eval()
        tokens = torch.randn(2, 32 * 32, 64)
        breaks = torch._dynamo.explain(net)(tokens).graph_break_count
        compiled = torch.compile(net, fullgraph=True)
        torch.testing.assert_close(compiled(tokens), net(tokens), rtol=1e-4, atol=1e-4)
        t = interleaved({"eager": lambda: net(tokens), "compiled": lambda: compiled(tokens)}, args.repeats,
                        args.min_sample)
        print(f"3. neighborhood + window + halo network, 32x32 tokens: eager {t['eager']:.2f} ms, compiled "
              f"{t['compiled']:.2f} ms, compiled / eager {t['compiled'] / t['eager']:.3f} (target <= 1), "
              f"graph breaks {breaks}")


if __name__ == "__main__":
    main()
