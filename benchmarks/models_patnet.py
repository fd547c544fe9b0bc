"""PATNet against FasterNet of the same size tag (arXiv 2503.03148 claims PATNet-T2 is faster than FasterNet-T2 on
GPU and CPU), and visattn's FasterNet against timm's, images/s measured in one interleaved run.

Forward in inference mode, fp32, batch ``--batch`` (8) at ``--img-size`` (224), random weights (speed does not
depend on them), timed in interleaved bursts (``visattn.bench.interleaved_bursts``): each round times every model
once, so all see the same machine load; ratios of medians of ``--repeats`` rounds are printed, absolute times only
as context (the machine is shared).

Run: ``python benchmarks/models_patnet.py`` (``--threads 2``; ``--sizes t0 t1 t2``).
"""

from __future__ import annotations

import argparse
import statistics

import timm
import torch

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from _common import set_threads
from visattn.bench import interleaved_bursts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["t0", "t1", "t2"])
    args = parser.parse_args()
    set_threads(args.threads)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    print(f"batch {args.batch}, {args.img_size} px, fp32 forward (inference mode), {args.threads} threads, "
          f"median of {args.repeats} interleaved rounds")
    print("| size | PATNet / FasterNet (images/s) | visattn FasterNet / timm FasterNet | PATNet ms/batch (context) |")
    print("|---|---|---|---|")
    for size in args.sizes:
        names = (f"visattn_patnet_{size}", f"visattn_fasternet_{size}", f"fasternet_{size}")
        models = []
        for name in names:
            torch.manual_seed(0)
            models.append(timm.create_model(name).eval())
        fns = [lambda m=m: m(x) for m in models]
        with torch.inference_mode():
            for fn in fns:
                fn()
            samples = interleaved_bursts(fns, [1] * len(fns), args.repeats, lambda: None)
        patnet, ours, theirs = (statistics.median(s) for s in samples)
        print(f"| {size} | {ours / patnet:.2f} | {theirs / ours:.2f} | {patnet:.0f} |")


if __name__ == "__main__":
    main()
