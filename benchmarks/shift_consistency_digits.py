"""Shift consistency (arXiv 2306.07470) of plain and polyphase-anchored ViT / Swin trained on upscaled digits.

Paper: Ding et al., "Reviving Shift Equivariance in Vision Transformers" (arXiv 2306.07470). Each pair (timm's
plain model and its ``visattn_poly*`` counterpart, the same small configuration, the same seed and data order) is
trained on scikit-learn's digits upscaled to 32 x 32 for the same number of steps; printed: test accuracy, accuracy
on circularly shifted test images, and consistency (the fraction of test images whose top-1 prediction agrees under
two random circular shifts), for shifts anywhere in the image and for shifts of at most 4 pixels.

    python benchmarks/shift_consistency_digits.py            # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from rich.console import Console
from rich.table import Table

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from visattn.models.shift_equivariant import circular_shift, shift_consistency
from visattn.tasks.digits import stratified_digits
from visattn.train.convert import evaluate_accuracy, finetune

CONFIGS = {
    "vit": ("vit_tiny_patch16_224", "visattn_polyvit_tiny_patch16_224",
            dict(patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)),
    "swin": ("swin_tiny_patch4_window7_224", "visattn_polyswin_tiny_patch4_window7_224",
             dict(patch_size=4, window_size=4, embed_dim=48, depths=(2, 2), num_heads=(2, 4), drop_path_rate=0.0)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    x_train, y_train, x_test, y_test = stratified_digits(32, channels=3, seed=args.seed)
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(args.seed))
    train = [(x_train[order[i : i + 64]], y_train[order[i : i + 64]]) for i in range(0, len(order), 64)]
    test = [(x_test, y_test)]
    shifts = (torch.rand(len(y_test), 2, generator=torch.Generator().manual_seed(args.seed + 1)) * 32).long()
    shifted_test = [(circular_shift(x_test, shifts), y_test)]

    table = Table(title=f"digits 32 px, {args.steps} training steps, {len(y_test)} test images")
    for column in ("model", "test acc.", "shifted test acc.", "consistency (any shift)", "consistency (<= 4 px)",
                   "train time"):
        table.add_column(column)
    for family in args.models:
        for name in CONFIGS[family][:2]:
            torch.manual_seed(args.seed)
            model = timm.create_model(name, img_size=32, num_classes=10, **CONFIGS[family][2])
            start = time.perf_counter()
            finetune(model, train, args.steps, lr=2e-3, weight_decay=0.05)
            seconds = time.perf_counter() - start
            gen = torch.Generator().manual_seed(args.seed + 2)
            table.add_row(name, f"{evaluate_accuracy(model, test):.4f}",
                          f"{evaluate_accuracy(model, shifted_test):.4f}",
                          f"{float(shift_consistency(model, x_test, trials=3, generator=gen)):.4f}",
                          f"{float(shift_consistency(model, x_test, trials=3, max_shift=4, generator=gen)):.4f}",
                          f"{seconds:.0f} s")
            console.print(f"{name} trained ({seconds:.0f} s)")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
