"""eccNET fixations per second on CPU at the published display size, against IVSN (plain pooling) in the same run.

The curvature experiment's display (11.3 deg at 30 px/deg: 339 px, a 6 x 6 grid of 56 px cells) with the release's
view window (``eye_res`` = display side, 64 px corner bias: an 806 x 806 view per fixation) through VGG16 with random
weights (speed does not depend on the weights). Each fixation is one pass of the network up to pool 5 plus the
top-down map; the script times whole searches of a fixed number of fixations (the budget, target made unreachable)
and prints fixations/s for eccNET and IVSN and their ratio, plus the analytic share of the extra ring pooling.

    python benchmarks/eccnet_fixations.py                 # two timed fixations each (plus one warm-up)
    python benchmarks/eccnet_fixations.py --fixations 5 --backbone vgg11
"""

from __future__ import annotations

import argparse
import time

import torch

from visattn.search.asymmetry import generate_display
from visattn.search.eccnet import EccentricityConfig, EccNet


def _time_search(model: EccNet, display, fixations: int, repeats: int) -> float:
    never = torch.zeros_like(display.target_mask)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = model.search(display.image, display.target, never, item_masks=display.item_masks,
                              background=display.background, max_fixations=fixations)
        elapsed = time.perf_counter() - start
        if result.num_fixations != fixations:
            raise RuntimeError(f"expected {fixations} fixations, got {result.num_fixations}")
        best = min(best, elapsed)
    return fixations / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--fixations", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    display = generate_display("curvature", "curve_in_lines", 32, seed=0)
    side = display.image.shape[-1]
    print(f"display {side}x{side} px, view {2 * (side + 64)}x{2 * (side + 64)} px, backbone {args.backbone}, "
          f"{args.threads} threads, {args.fixations} fixations per search, best of {args.repeats}")
    rates = {}
    for name, ecc in (("eccNET", EccentricityConfig()), ("IVSN", None)):
        model = EccNet(args.backbone, eccentricity=ecc)
        model.search(display.image, display.target, torch.zeros_like(display.target_mask),
                     item_masks=display.item_masks, max_fixations=1)
        rates[name] = _time_search(model, display, args.fixations, args.repeats)
        layouts = [s.eccentric.layout for s in model.switches] if ecc is not None else []
        print(f"{name:7s} {rates[name]:.3f} fixations/s ({1 / rates[name]:.2f} s per fixation)")
        if layouts:
            size = 2 * (side + 64)
            for number, layout_of in enumerate(layouts, start=1):
                layout = layout_of(size)
                print(f"        pool{number}: input {size}, {len(layout.rf_sizes)} regions, windows {layout.rf_sizes}")
                size = layout.out_size
    print(f"eccNET / IVSN speed ratio: {rates['eccNET'] / rates['IVSN']:.3f}")


if __name__ == "__main__":
    main()
