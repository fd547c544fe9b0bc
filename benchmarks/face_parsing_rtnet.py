"""RTNet on synthetic face scenes: the same small network trained with the RoI tanh-polar warp (RTNet) and without
any warp (the image resized to the same working size, polar-only blocks), same data, same steps, same seed; mIoU and
mean F1 on held-out scenes in the image frame, both measured in this run.

    python benchmarks/face_parsing_rtnet.py --steps 300
"""

from __future__ import annotations

import argparse
import time

import torch

from visattn.models.rtnet import RTNet
from visattn.tasks.face_parsing import CLASSES, train_face_parser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=96, help="side of the synthetic images")
    parser.add_argument("--warp-size", type=int, default=64)
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--warps", nargs="+", default=["tanh_polar", "none"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for warp in args.warps:
        torch.manual_seed(args.seed)
        model = RTNet(num_classes=len(CLASSES), layers=(1, 1, 1, 1), warp_size=args.warp_size,
                      base_width=args.base_width, warp=warp)
        start = time.perf_counter()
        report = train_face_parser(model, args.steps, args.batch_size, args.size, seed=args.seed, eval_count=64,
                                   log_every=0)
        elapsed = time.perf_counter() - start
        results[warp] = report.scores
        tail = report.losses[-10:]
        params = sum(p.numel() for p in model.parameters())
        print(f"warp={warp}: {params / 1e3:.1f} k parameters, {args.steps} steps in {elapsed:.0f} s, loss "
              f"{report.losses[0]:.3f} -> {sum(tail) / len(tail):.3f}; held-out mIoU {report.scores['miou']:.4f}, "
              f"mean F1 {report.scores['mean_f1']:.4f}")
        print("  per-class IoU: " + ", ".join(f"{name} {value:.3f}" for name, value in
                                               zip(CLASSES, report.scores["iou"], strict=True)))
    if {"tanh_polar", "none"} <= set(results):
        gain = results["tanh_polar"]["miou"] - results["none"]["miou"]
        print(f"mIoU with the RoI tanh-polar warp minus without: {gain:+.4f}")


if __name__ == "__main__":
    main()
