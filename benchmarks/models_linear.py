"""Linear-attention backbones against the softmax models they replace: images/s ratios measured in one run.

    python benchmarks/models_linear.py                        # 224 and 384, batch 1, 5 rounds, 2 threads
    python benchmarks/models_linear.py --sizes 224 512 --rounds 3

Pairs (fp32, eval, random weights, the same images for both sides of a pair):

- InLine-Swin-T (``visattn_inline_swin_tiny``: InLine over the whole map in stages 1-3) against timm's
  ``swin_tiny_patch4_window7_224`` (softmax windows of 7). At 384 both are built for 384: InLine keeps the whole
  map, timm's Swin-T runs windows of 12 (the official InLine and Swin 384 configs).
- L2ViT-T (``visattn_l2vit_tiny``) against its softmax counterpart: the same network with the enhanced linear
  attention of every odd block replaced by softmax attention over the whole map (visattn's ``softmax`` mixer,
  SDPA), the local-window blocks unchanged.

Samples are taken in rounds (softmax model, then linear model, each a burst of ``--calls`` calls, timed with
:func:`visattn.bench.timing.time_burst`), the printed ratios are the medians of the per-round ratios
``time(softmax) / time(linear)`` (> 1: the linear model is faster) of wall time (with its range) and of CPU time
(all threads; less sensitive than wall time to other processes on a shared machine). Absolute times are printed
only to show what was measured; compare ratios.
"""

from __future__ import annotations

import argparse
import statistics

import timm
import torch
from torch import nn

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from _common import run_header
from visattn.bench import load_average
from visattn.bench.paired import inference_call
from visattn.bench.timing import time_burst
from visattn.models.l2vit import LinearGlobalBlock
from visattn.registry import create_mixer


def l2vit_softmax_counterpart(model: nn.Module) -> nn.Module:
    """``model`` (an L2ViT) with every linear global block's mixer replaced by global softmax attention."""
    for module in model.modules():
        if isinstance(module, LinearGlobalBlock):
            module.attn.mixer = create_mixer("softmax")
    return model


def pairs(size: int) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, softmax model, linear model) at image side ``size``."""
    swin_window = max(7, size // 32)
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=size, window_size=swin_window)
    inline = timm.create_model("visattn_inline_swin_tiny", img_size=size)
    torch.manual_seed(0)
    l2vit = timm.create_model("visattn_l2vit_tiny")
    softmax_l2vit = timm.create_model("visattn_l2vit_tiny")
    softmax_l2vit.load_state_dict(l2vit.state_dict(), strict=False)
    l2vit_softmax_counterpart(softmax_l2vit)
    return [(f"InLine-Swin-T vs timm Swin-T (window {swin_window})", swin.eval(), inline.eval()),
            ("L2ViT-T vs L2ViT-T with softmax global blocks", softmax_l2vit.eval(), l2vit.eval())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(run_header(args.threads, args.batch))
    print("| pair | image | ratio softmax/linear wall | range | ratio CPU time | softmax ms | linear ms |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        for name, softmax_model, linear_model in pairs(size):
            slow, fast = inference_call(softmax_model, images), inference_call(linear_model, images)
            slow(), fast()
            rounds = [(time_burst(slow, args.calls), time_burst(fast, args.calls)) for _ in range(args.rounds)]
            wall = [s[0] / f[0] for s, f in rounds]
            cpu = statistics.median(s[1] / f[1] for s, f in rounds)
            print(f"| {name} | {size} | {statistics.median(wall):.2f}x | {min(wall):.2f}-{max(wall):.2f} "
                  f"| {cpu:.2f}x | {1e3 * statistics.median(s[0] for s, _ in rounds):.0f} "
                  f"| {1e3 * statistics.median(f[0] for _, f in rounds):.0f} |", flush=True)
    print(f"load average after {load_average()}")


if __name__ == "__main__":
    main()
