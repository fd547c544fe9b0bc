"""S2LIC against JPEG at equal bits per pixel on scikit-image's sample pictures, measured in one run.

Trains a small S2LIC (``visattn.tasks.compression.TINY_CONFIG``) on the CPU for at most ``--steps`` Adam steps and
``--minutes`` of wall clock (or loads ``--checkpoint``), on random multi-scale crops (flipped) of scikit-image's
pictures and generated textures (``visattn.tasks.compression.training_pictures``). Then it codes each held-out
picture (astronaut, coffee: never seen in training; the centre square resized to ``--size``) to a real bitstream
file and decodes it (``compare_with_jpeg``). For each picture it prints the file's bpp (header included) beside
the entropy estimate, the PSNR of the decoded 8-bit picture, JPEG's PSNR at the same bpp (Pillow, whole file,
interpolated between qualities 1..95) and the difference in dB, JPEG's bpp at the same PSNR (the rate ratio), and
JPEG's smallest file (quality 1): a codec file smaller than it with a higher PSNR is better than JPEG at every rate
JPEG can reach. ``--train-pictures`` adds the training pictures to the table (not a fair comparison: seen in
training). With ``--eval-every`` it prints the entropy estimate and PSNR of the held-out pictures during training
(the trend with steps).

    python benchmarks/s2lic_vs_jpeg.py                      # the default recipe, about 10 minutes on 2 idle cores
    python benchmarks/s2lic_vs_jpeg.py --lmbda 0.0067 --save s2lic.pt
    python benchmarks/s2lic_vs_jpeg.py --checkpoint s2lic.pt
    python benchmarks/s2lic_vs_jpeg.py --resume s2lic.pt --steps 2000 --minutes 30 --save s2lic_more.pt

The learning rate drops 10x after ``--decay-at`` of the steps or of ``--minutes``, whichever comes first.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch

from visattn.tasks import compression as comp


def held_out_trend(model: torch.nn.Module, size: int) -> str:
    """Entropy-estimate bpp and PSNR of the held-out pictures in eval mode (no coding), one line."""
    was_training = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for name in comp.TEST_IMAGES:
            x = comp.sample_image(name, size)[None]
            out = model(x)
            bpp = float(comp.bits_per_pixel(out["likelihoods"], size * size))
            parts.append(f"{name} {bpp:.3f} bpp {comp.psnr(x[0], out['x_hat'][0]):.2f} dB")
    model.train(was_training)
    return ", ".join(parts)


def train_in_chunks(model: torch.nn.Module, args: argparse.Namespace) -> int:
    """``comp.train`` for ``args.steps`` steps in one call (one optimiser), or, with ``--eval-every``, the same loop
    written out so that the held-out trend is printed between steps. Returns the steps run."""
    images = comp.training_pictures(textures=args.textures)
    deadline = args.minutes * 60
    if not args.eval_every:
        losses = comp.train(model, images, args.steps, args.lmbda, crop=args.crop, batch=args.batch, lr=args.lr,
                            warmup=args.warmup, decay_at=args.decay_at, min_scale=args.min_scale, log_every=25,
                            max_seconds=deadline)
        return len(losses)
    generator = torch.Generator().manual_seed(0)
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    optimizer, aux_optimizer = torch.optim.Adam(main, lr=args.lr), torch.optim.Adam(aux, lr=1e-3)
    start, step = time.perf_counter(), 0
    model.train()
    for step in range(args.steps):
        if step % args.eval_every == 0:
            print(f"step {step:5d} {time.perf_counter() - start:6.0f} s  held out: {held_out_trend(model, args.size)}",
                  flush=True)
        for group in optimizer.param_groups:
            group["lr"] = comp.learning_rate_at(step, args.steps, args.lr, args.warmup, args.decay_at,
                                                time_fraction=(time.perf_counter() - start) / max(deadline, 1e-9))
        x = comp.random_crops(images, args.batch, args.crop, generator, args.min_scale)
        terms = comp.rate_distortion_loss(model(x), x, args.lmbda)
        optimizer.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        optimizer.step()
        aux_optimizer.zero_grad()
        model.aux_loss().backward()
        aux_optimizer.step()
        if time.perf_counter() - start > deadline:
            break
    print(f"step {step + 1:5d} {time.perf_counter() - start:6.0f} s  held out: {held_out_trend(model, args.size)}")
    return step + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate this checkpoint instead of training")
    parser.add_argument("--resume", type=Path, default=None,
                        help="train on from this checkpoint (fresh Adam with the warm-up; --steps more steps)")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps at most (default 1000)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-clock limit (default 15)")
    recipe = comp.SHORT_RUN
    parser.add_argument("--lmbda", type=float, default=recipe["lmbda"], help="rate-distortion trade-off")
    parser.add_argument("--lr", type=float, default=recipe["lr"], help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=recipe["warmup"], help="linear learning-rate warm-up steps")
    parser.add_argument("--decay-at", type=float, default=recipe["decay_at"],
                        help="fraction of the steps after which the learning rate drops 10x")
    parser.add_argument("--batch", type=int, default=recipe["batch"], help="crops per step")
    parser.add_argument("--crop", type=int, default=recipe["crop"], help="training crop side, a multiple of 64")
    parser.add_argument("--min-scale", type=float, default=recipe["min_scale"],
                        help="crops are resized by a factor in [min-scale, 1]")
    parser.add_argument("--textures", type=int, default=8, help="generated texture pictures added (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--eval-every", type=int, default=0, help="print the held-out trend every N steps")
    parser.add_argument("--size", type=int, default=256, help="side of the evaluated pictures (default 256)")
    parser.add_argument("--train-pictures", action="store_true", help="also code the training pictures")
    parser.add_argument("--save", type=Path, default=None, help="write the trained checkpoint here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        model = comp.load_checkpoint(args.checkpoint)
        model.update(force=True)  # this run's coder tables (encoder and decoder below share them)
        print(f"loaded {args.checkpoint}")
    else:
        from visattn.models.s2lic import S2LIC

        torch.manual_seed(0)
        model = S2LIC(**comp.TINY_CONFIG) if args.resume is None else comp.load_checkpoint(args.resume)
        earlier = 0 if args.resume is None else int(torch.load(args.resume, weights_only=True).get("steps", 0))
        start = time.perf_counter()
        steps = train_in_chunks(model, args)
        print(f"trained {steps} steps (batch {args.batch} of {args.crop} x {args.crop}, lambda {args.lmbda}, "
              f"lr {args.lr}) in {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} thread(s)")
        model.eval().update(force=True)
        if args.resume is not None:
            print(f"{earlier + steps} steps in all ({earlier} before this run, from {args.resume})")
        if args.save is not None:
            comp.save_checkpoint(model, args.save, lmbda=args.lmbda, steps=earlier + steps)
    params = sum(p.numel() for p in model.parameters())
    print(f"S2LIC {params / 1e6:.2f} M parameters, pictures {args.size} x {args.size} (centre squares, area-resized)")
    print(f"{'picture':<22}{'split':<9}{'bpp':>7}{'est.':>7}{'PSNR':>7}{'JPEG PSNR':>10}{'dB gain':>8}"
          f"{'JPEG bpp':>9}{'rate ratio':>11}{'JPEG q1 bpp/PSNR':>18}  verdict")
    splits = [("held-out", comp.TEST_IMAGES)] + ([("train", comp.TRAIN_IMAGES)] if args.train_pictures else [])
    for split, names in splits:
        for name in names:
            r = comp.compare_with_jpeg(model, comp.to_uint8(comp.sample_image(name, args.size)))
            if not math.isnan(r.gain_db):
                verdict = "better than JPEG" if r.gain_db > 0 else "worse than JPEG"
            elif r.dominates_jpeg_minimum:
                verdict = "better: smaller and sharper than JPEG's smallest file"
            else:
                verdict = "below JPEG's smallest file, lower PSNR: no equal-rate comparison"
            print(f"{name:<22}{split:<9}{r.bpp:7.3f}{r.estimate:7.3f}{r.psnr:7.2f}{r.jpeg_psnr:10.2f}"
                  f"{r.gain_db:8.2f}{r.jpeg_bpp:9.3f}{r.bpp / r.jpeg_bpp:11.3f}"
                  f"{r.jpeg_min_bpp:10.3f}/{r.jpeg_min_psnr:5.2f}  {verdict}")
    print("dB gain = S2LIC PSNR - JPEG PSNR at S2LIC's bpp (> 0: S2LIC better); rate ratio = S2LIC bpp / JPEG bpp "
          "at S2LIC's PSNR (< 1: S2LIC better); NaN: outside JPEG's range")


if __name__ == "__main__":
    main()
