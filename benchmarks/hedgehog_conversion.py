"""Convert a trained softmax ViT to Hedgehog linear attention by attention distillation, and compare accuracies.

Paper: Zhang et al., "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry"
(arXiv 2402.04347). A tiny timm ``VisionTransformer`` (2 x 2 patches of scikit-learn's 8 x 8 digits, 16 patch
tokens + a class token) is trained with softmax attention; :func:`visattn.nn.hedgehog_student` copies it with
Hedgehog mixers (identity-initialised feature maps), :func:`visattn.nn.distill_attention` fits only the feature
maps to the softmax attention weights layer by layer, and an optional short finetune trains the whole student.
Prints the test accuracy of each model and the fraction of the softmax accuracy Hedgehog keeps (target >= 95%).

    python benchmarks/hedgehog_conversion.py            # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from visattn.nn import distill_attention, hedgehog_student
from visattn.tasks.digits import stratified_digits


def tiny_vit(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=3,
                             num_heads=4, mlp_ratio=2.0)


def batches(x: Tensor, y: Tensor, size: int, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    order = torch.randperm(len(y), generator=generator)
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(y), size)]


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(y) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(epochs):
        for xb, yb in batches(x, y, 64, generator):
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60, help="softmax training epochs (default 60)")
    parser.add_argument("--distill-steps", type=int, default=300, help="attention distillation steps (default 300)")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="finetune epochs after distillation, 0 = none")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the tensors are tiny, and on a busy machine waking a second "
                             "thread costs milliseconds per op)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    x_train, y_train, x_test, y_test = stratified_digits(seed=args.seed)  # (B, 1, 8, 8), standardised

    start = time.perf_counter()
    teacher = tiny_vit(args.seed)
    train(teacher, x_train, y_train, args.epochs, 3e-3, args.seed)
    softmax_acc = accuracy(teacher, x_test, y_test)
    train_time = time.perf_counter() - start

    student = hedgehog_student(teacher)
    identity_acc = accuracy(student, x_test, y_test)
    start = time.perf_counter()
    distill_batches = [xb for xb, _ in batches(x_train, y_train, 64, torch.Generator().manual_seed(args.seed))]
    distill_attention(teacher, student, distill_batches, steps=args.distill_steps, lr=1e-2)
    distilled_acc = accuracy(student, x_test, y_test)
    distill_time = time.perf_counter() - start

    rows = [
        ("softmax ViT (teacher)", softmax_acc, f"trained {args.epochs} epochs, {train_time:.0f} s"),
        ("Hedgehog, identity maps, no distillation", identity_acc, "teacher weights, new mixers"),
        ("Hedgehog after attention distillation", distilled_acc,
         f"{args.distill_steps} steps, feature maps only, {distill_time:.0f} s"),
    ]
    if args.finetune_epochs:
        start = time.perf_counter()
        train(student, x_train, y_train, args.finetune_epochs, 1e-3, args.seed + 1)
        rows.append(("Hedgehog after distillation + finetune", accuracy(student, x_test, y_test),
                     f"{args.finetune_epochs} epochs, all weights, {time.perf_counter() - start:.0f} s"))

    table = Table(title=f"Softmax -> Hedgehog conversion on scikit-learn digits ({len(y_test)} test images)")
    for column in ("model", "test accuracy", "kept of softmax", "how"):
        table.add_column(column)
    for name, acc, how in rows:
        table.add_row(name, f"{acc:.4f}", f"{acc / softmax_acc:.1%}", how)
    console.print(table)
    final = rows[-1][1] / softmax_acc
    console.print(f"Hedgehog keeps {final:.1%} of the softmax model's test accuracy (target >= 95%): "
                  f"{'met' if final >= 0.95 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
