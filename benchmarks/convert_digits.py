"""``visattn.convert``: a softmax ViT trained on upscaled digits, converted to linear attention, accuracy kept.

Paper: Zhang et al., "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry"
(arXiv 2402.04347). A small timm ``VisionTransformer`` (16 x 16 upscaled scikit-learn digits, 4 x 4 patches: 16
patch tokens and a class token, width 48, depth 2, 4 heads; ``--img-size 32``: 64 patch tokens) is trained with
softmax attention; then
:func:`visattn.convert` turns it into each linear mixer (stage 1: per-layer attention distillation of the mixer's
parameters only; stage 2: fine-tuning of every weight). Measured in the same run, on the same teacher:

- each mixer with distillation + fine-tuning, and Hedgehog with fine-tuning alone (no distillation, the same
  fine-tuning steps): the accuracy kept and the per-layer attention agreement ``mean_i sum_j min(a_ij, a^_ij)``
  before and after.

    python benchmarks/convert_digits.py                 # a few minutes on 2 cores
    python benchmarks/convert_digits.py --mixers hedgehog linear
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from visattn.tasks.digits import stratified_digits
from visattn.train.convert import convert, evaluate_accuracy, finetune


def batches(x: Tensor, y: Tensor, size: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(y), size)]


def small_vit(img_size: int, seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=img_size, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=2,
                             num_heads=4, mlp_ratio=2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", default=["hedgehog", "taylor", "l2vit_linear", "inline", "linear"])
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=400, help="softmax teacher training steps")
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    x_train, y_train, x_test, y_test = stratified_digits(args.img_size, seed=args.seed)
    train = batches(x_train, y_train, 64, args.seed)
    test = batches(x_test, y_test, 256, args.seed)

    start = time.perf_counter()
    teacher = small_vit(args.img_size, args.seed)
    finetune(teacher, train, args.train_steps, lr=3e-3, weight_decay=0.05)
    teacher_time = time.perf_counter() - start
    teacher_acc = evaluate_accuracy(teacher, test)
    console.print(f"softmax teacher: test accuracy {teacher_acc:.4f} after {args.train_steps} steps "
                  f"({teacher_time:.0f} s)")

    runs = [(mixer, args.distill_steps) for mixer in args.mixers]
    if "hedgehog" in args.mixers:
        runs.insert(1, ("hedgehog", 0))
    table = Table(title=f"softmax -> linear conversion, {args.img_size}px digits, {len(y_test)} test images, "
                        f"teacher {teacher_acc:.4f}")
    for column in ("mixer", "distil steps", "agreement before", "after distil", "acc. fresh", "acc. distilled",
                   "acc. final", "kept", "time"):
        table.add_column(column)
    for mixer, distill_steps in runs:
        start = time.perf_counter()
        _, report = convert(teacher, mixer, train, eval_data=test, distill_steps=distill_steps,
                            finetune_steps=args.finetune_steps, finetune_lr=5e-4)
        seconds = time.perf_counter() - start
        table.add_row(mixer, str(report.distill_steps), f"{report.agreement_initial.mean_agreement:.3f}",
                      f"{report.agreement_distilled.mean_agreement:.3f}", f"{report.initial_accuracy:.4f}",
                      f"{report.distilled_accuracy:.4f}", f"{report.final_accuracy:.4f}",
                      f"{report.accuracy_kept:.1%}", f"{seconds:.0f} s")
        console.print(report.summary())
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
