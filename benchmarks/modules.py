"""Feature-map modules (issue 14): forward time as a fraction of the host block's, and PConv against the full 3x3
convolution it replaces, measured side by side in one run on CPU.

1. PConv (FasterNet, arXiv 2303.03667) at ``n_div = 4``: ``PartialConv2d`` (both forms) against
   ``nn.Conv2d(c, c, 3, padding=1)`` on the same input; FLOPs are 1/16 of the full convolution's.
2. Each attention module with the channels of a timm ResNet-50 bottleneck's output (``layer3``: 1024 channels at
   14 x 14, and ``layer1``: 256 at 56 x 56) against that bottleneck's own forward (without the module).

Timings are medians of interleaved bursts (each candidate and its baseline alternate, so load on a shared machine
hits both), inference mode, float32, batch ``--batch``; the threads are ``--threads`` (default 1).

    OMP_NUM_THREADS=1 python benchmarks/modules.py            # about a minute
    python benchmarks/modules.py --quick                      # smaller sizes
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable

import torch
from timm.models.resnet import Bottleneck
from torch import nn

from visattn.nn import create_attn
from visattn.nn.feature_maps import PartialConv2d


def burst(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call over a burst of at least ``min_time`` seconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * min_time / 0.2))
    return timer.timeit(number) / number


def side_by_side(fns: dict[str, Callable[[], object]], rounds: int, min_time: float) -> dict[str, float]:
    """Median seconds per call of each function, the functions timed in turn, ``rounds`` times."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(burst(fn, min_time))
    return {k: statistics.median(v) for k, v in samples.items()}


def pconv_vs_conv(batch: int, channels: int, size: int, rounds: int, min_time: float) -> None:
    x = torch.randn(batch, channels, size, size)
    full = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    split = PartialConv2d(channels, 4, "split_cat").eval()
    sliced = PartialConv2d(channels, 4, "slicing").eval()
    times = side_by_side({"full": lambda: full(x), "split_cat": lambda: split(x), "slicing": lambda: sliced(x)},
                         rounds, min_time)
    line = f"PConv n_div=4  B={batch} C={channels} {size}x{size}: full 3x3 {times['full'] * 1e3:8.3f} ms"
    for form in ("split_cat", "slicing"):
        line += f" | {form} {times[form] * 1e3:7.3f} ms = {times['full'] / times[form]:5.2f}x faster"
    print(line)


MODULES: dict[str, dict[str, object]] = {
    "psa_p": {}, "psa_s": {}, "psa_s official": {"variant": "official"}, "ulsam": {"groups": 4},
    "ulsam official": {"groups": 4, "variant": "official"}, "pat_sp": {}, "radial_embedding": {},
}


def module_fractions(batch: int, channels: int, size: int, rounds: int, min_time: float) -> None:
    x = torch.randn(batch, channels, size, size)
    host = Bottleneck(channels, channels // 4).eval()
    modules = {k: create_attn(k.split()[0], channels, **kw).eval() for k, kw in MODULES.items()}
    fns: dict[str, Callable[[], object]] = {"bottleneck": lambda: host(x)}
    for k, m in modules.items():
        fns[k] = (lambda m=m: m(x))
    times = side_by_side(fns, rounds, min_time)
    base = times["bottleneck"]
    print(f"ResNet-50 bottleneck B={batch} C={channels} {size}x{size}: {base * 1e3:.2f} ms per forward")
    for k in MODULES:
        print(f"  {k:18s} {times[k] * 1e3:8.3f} ms = {times[k] / base:6.1%} of the bottleneck")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per timing burst")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, inference mode")
    pconv_cases = [(args.batch, 64, 56), (args.batch, 128, 28), (args.batch, 256, 14)]
    host_cases = [(args.batch, 1024, 14), (args.batch, 256, 56)]
    if args.quick:
        pconv_cases, host_cases = pconv_cases[1:2], host_cases[:1]
    with torch.inference_mode():
        for case in pconv_cases:
            pconv_vs_conv(*case, args.rounds, args.min_time)
        for case in host_cases:
            module_fractions(*case, args.rounds, args.min_time)


if __name__ == "__main__":
    main()
