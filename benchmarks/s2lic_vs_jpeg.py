"""S2LIC against JPEG at equal bits per pixel on scikit-image's sample pictures, measured in one run.

Trains a small S2LIC (``visattn.tasks.compression.TINY_CONFIG``) on random crops of the training pictures for
``--steps`` Adam steps on the CPU (or loads ``--checkpoint``), then codes each picture (centre square resized to
``--size``) to a real bitstream file and decodes it. For each picture it prints the codec's file size in bpp (header
included) beside its entropy estimate, the PSNR of the decoded 8-bit picture, JPEG's PSNR at the same bpp (Pillow,
whole file, interpolated between qualities) and JPEG's bpp at the same PSNR — the rate ratio S2LIC / JPEG.

    python benchmarks/s2lic_vs_jpeg.py --steps 300 --lmbda 0.0035
    python benchmarks/s2lic_vs_jpeg.py --checkpoint s2lic.pt
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from visattn.tasks import compression as comp


def jpeg_bpp_at_psnr(curve: list[comp.JpegPoint], target: float) -> float:
    """JPEG's bpp for ``target`` dB, interpolated on the curve made monotone; NaN outside it."""
    psnrs = np.maximum.accumulate([p.psnr for p in curve])
    if target < psnrs[0] or target > psnrs[-1]:
        return float("nan")
    return float(np.interp(target, psnrs, [p.bpp for p in curve]))


def evaluate(model: torch.nn.Module, name: str, size: int) -> dict[str, float]:
    from visattn.models.s2lic import pad_to_multiple

    image = comp.sample_image(name, size)
    pixels = comp.to_uint8(image)
    x = pad_to_multiple(comp.to_tensor(pixels)[None])
    with torch.no_grad():
        estimate = float(comp.bits_per_pixel(model(x)["likelihoods"], size * size))
    start = time.perf_counter()
    coded = model.compress(x)
    data = comp.pack_stream(coded["strings"], coded["shape"], (size, size), comp.model_fingerprint(model))
    encode_s = time.perf_counter() - start
    strings, shape, _, _ = comp.unpack_stream(data)
    start = time.perf_counter()
    x_hat = model.decompress(strings, shape)["x_hat"][0]
    decode_s = time.perf_counter() - start
    bpp = 8 * len(data) / (size * size)
    quality = comp.psnr(pixels.astype(np.float64) / 255, comp.to_uint8(x_hat).astype(np.float64) / 255)
    curve = comp.jpeg_curve(pixels)
    return {"bpp": bpp, "estimate": estimate, "psnr": quality, "jpeg_psnr": comp.jpeg_psnr_at_bpp(curve, bpp),
            "jpeg_bpp": jpeg_bpp_at_psnr(curve, quality), "encode_s": encode_s, "decode_s": decode_s,
            "jpeg_min_bpp": curve[0].bpp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate this checkpoint instead of training")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lmbda", type=float, default=0.0035)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--size", type=int, default=256, help="side of the evaluated pictures (default 256)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the pictures' centre squares resized to this side (default: full pictures)")
    parser.add_argument("--save", type=Path, default=None, help="write the trained checkpoint here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.checkpoint is not None:
        model = comp.load_checkpoint(args.checkpoint)
        model.update(force=True)  # this run's coder tables (encoder and decoder below share them)
    else:
        from visattn.models.s2lic import S2LIC

        torch.manual_seed(0)
        model = S2LIC(**comp.TINY_CONFIG)
        start = time.perf_counter()
        images = [comp.sample_image(n, args.train_size) for n in comp.TRAIN_IMAGES]
        comp.train(model, images, args.steps, args.lmbda, batch=args.batch, lr=args.lr, log_every=25)
        print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s")
        model.eval().update(force=True)
        if args.save is not None:
            comp.save_checkpoint(model, args.save, lmbda=args.lmbda, steps=args.steps)
    params = sum(p.numel() for p in model.parameters())
    print(f"S2LIC {params / 1e6:.2f} M parameters, pictures {args.size} x {args.size}")
    header = (f"{'picture':<22}{'split':<7}{'bpp':>7}{'est.':>7}{'file/est':>9}{'PSNR':>7}{'JPEG PSNR':>10}"
              f"{'dPSNR':>7}{'JPEG bpp':>9}{'rate S2LIC/JPEG':>16}")
    print(header)
    for split, names in (("test", comp.TEST_IMAGES), ("train", comp.TRAIN_IMAGES)):
        for name in names:
            r = evaluate(model, name, args.size)
            print(f"{name:<22}{split:<7}{r['bpp']:7.3f}{r['estimate']:7.3f}{r['bpp'] / r['estimate']:9.3f}"
                  f"{r['psnr']:7.2f}{r['jpeg_psnr']:10.2f}{r['psnr'] - r['jpeg_psnr']:7.2f}{r['jpeg_bpp']:9.3f}"
                  f"{r['bpp'] / r['jpeg_bpp']:16.3f}")
    print("dPSNR > 0 and rate ratio < 1: S2LIC better than JPEG at equal rate; NaN: outside JPEG's range "
          "(below its smallest file at quality 1)")


if __name__ == "__main__":
    main()
