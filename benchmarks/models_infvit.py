"""Linear InfViT 4L against a softmax ViT of the same size: images/s ratios measured in one run.

    python benchmarks/models_infvit.py                          # 224, 384 and 512 px, batch 1, 3 rounds, 2 threads
    python benchmarks/models_infvit.py --sizes 224 --batch 4

Both sides are 4 blocks of width 1024 with 16 heads and patch 16 (``visattn_infvit_linear_patch16_224`` and timm's
``VisionTransformer`` with the same shape; InfViT without its pre-logits layer, which timm's ViT lacks), built for
each input size, fp32, eval,
random weights, the same images. The ratio is the median over paired rounds of ``time(ViT) / time(InfViT)`` (> 1:
InfViT is faster), with the range of the per-round ratios (:func:`visattn.bench.paired.paired_ratio`).
"""

from __future__ import annotations

import argparse

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from _common import run_header
from visattn.bench import load_average
from visattn.bench.paired import inference_call, paired_ratio

WIDTH, DEPTH, HEADS = 1024, 4, 16


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(run_header(args.threads, args.batch, args.rounds))
    print("| image | tokens | ratio ViT / InfViT time | range | ViT ms | InfViT ms |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        infvit = timm.create_model("visattn_infvit_linear_patch16_224", img_size=size, representation_size=0).eval()
        vit = VisionTransformer(img_size=size, patch_size=16, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS).eval()
        images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        ratio = paired_ratio(inference_call(vit, images), inference_call(infvit, images), args.rounds, 1)
        print(f"| {size} | {(size // 16) ** 2 + 1} | {ratio.ratio:.2f}x | {ratio.low:.2f}-{ratio.high:.2f} | "
              f"{ratio.theirs_ms:.0f} | {ratio.ours_ms:.0f} |", flush=True)
    print(f"load average after {load_average()}")


if __name__ == "__main__":
    main()
