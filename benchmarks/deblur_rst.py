"""RST deblurring on generated data: a small Radial Strip Transformer trained on CPU for a few hundred steps on
motion- and rotation-blurred crops of scikit-image's sample images; PSNR/SSIM (scikit-image) of the held-out blurred
crops against those of the restorations, both measured in this run. The output convolution starts at zero (the
untrained network is the identity) unless ``--default-output-init``.

    python benchmarks/deblur_rst.py --steps 300
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from visattn.models.rst import RadialStripTransformer
from visattn.tasks.deblur import train_deblur


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fft-weight", type=float, default=0.1, help="weight of the spectrum L1 term (release: 0.1)")
    parser.add_argument("--default-output-init", action="store_true",
                        help="keep PyTorch's initialisation of the output convolution (the release's) instead of zero")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = RadialStripTransformer(dim=args.dim, num_blocks=(1, 1, 2), num_refinement_blocks=1, img_size=args.crop,
                                   zero_init_output=not args.default_output_init)
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    report = train_deblur(model, args.steps, args.batch_size, args.crop, args.lr, args.seed, eval_count=32,
                          log_every=25, fft_weight=args.fft_weight)
    elapsed = time.perf_counter() - start
    head, tail = report.losses[:10], report.losses[-10:]
    init = "default" if args.default_output_init else "zero"
    print(f"RST dim={args.dim} blocks=1-1-2+1 ({params / 1e3:.1f} k parameters, {init} output init), {args.steps} "
          f"steps of {args.batch_size} x {args.crop}^2 crops at lr {args.lr:g}, fft weight {args.fft_weight:g}, "
          f"{elapsed:.0f} s")
    print(f"loss (mean of 10): first {sum(head) / len(head):.4f}, last {sum(tail) / len(tail):.4f}")
    print(f"held-out PSNR: blurred {report.psnr_blurred:.2f} dB -> restored {report.psnr_restored:.2f} dB "
          f"({report.psnr_restored - report.psnr_blurred:+.2f} dB)")
    print(f"held-out SSIM: blurred {report.ssim_blurred:.4f} -> restored {report.ssim_restored:.4f}")


if __name__ == "__main__":
    main()
