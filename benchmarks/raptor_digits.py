"""Raptor on a small ViT trained here: how much of the teacher's accuracy k recurrent blocks keep.

Paper: Jacobs, Fel, Hakim et al., "Block-Recurrent Dynamics in Vision Transformers" (arXiv 2512.19941). A timm
``VisionTransformer`` (scikit-learn's 8 x 8 digits upscaled to 32 x 32, 4 x 4 patches of 8 x 8 pixels + a class
token, width 64, depth 8, average pooling, stochastic depth 0.1, which the paper finds promotes block-recurrent
structure) is trained
on 75% of the digits; :func:`visattn.train.raptor.fit_raptor` then fits Raptor surrogates to it on the same training
images, with the phases found by max-cut of the teacher's layer dissimilarity at several ``eps`` (so several phase
counts k), and, in the same run, the two ends of the range: one block for all layers (k = 1) and one block per layer
(k = L, no sharing). Prints, on the held-out 25%, each model's accuracy, the fraction of the teacher's accuracy it
keeps, its agreement with the teacher and the R^2 of its last hidden state.

    python benchmarks/raptor_digits.py                 # about 10 minutes on 2 idle cores
    python benchmarks/raptor_digits.py --quick         # a smoke run (a minute)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from visattn.tasks.digits import stratified_digits
from visattn.train.raptor import fit_raptor, teacher_phases


def train_teacher(x: Tensor, y: Tensor, steps: int, seed: int, depth: int) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=depth, num_heads=4,
                              mlp_ratio=2.0, drop_path_rate=0.1, global_pool="avg")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(y), (128,), generator=generator)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps: checks that the script runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--phase-steps", type=int, default=100)
    parser.add_argument("--joint-steps", type=int, default=300)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.2, 0.1, 0.05])
    args = parser.parse_args()
    if args.quick:
        args.teacher_steps, args.phase_steps, args.joint_steps = 60, 10, 10
    console = Console(width=150)
    # digits upscaled (nearest) to 32, on RGB, standardised with the training statistics; 75/25 split
    x_train, y_train, x_test, y_test = stratified_digits(32, channels=3, mode="nearest", seed=args.seed)
    start = time.perf_counter()
    teacher = train_teacher(x_train, y_train, args.teacher_steps, args.seed, args.depth)
    console.print(f"teacher trained in {time.perf_counter() - start:.0f} s")

    candidates: dict[tuple[tuple[int, ...], ...], str] = {tuple([tuple(range(args.depth))]): "one block (k = 1)"}
    for eps in args.eps:
        phases, _ = teacher_phases(teacher, x_train[:512], eps=eps)
        candidates.setdefault(phases, f"max-cut, eps {eps}")
    candidates.setdefault(tuple((i,) for i in range(args.depth)), f"one block per layer (k = {args.depth})")

    table = Table(title=f"Raptor fitted to a depth-{args.depth} ViT on digits (held-out accuracy)")
    for column in ("surrogate", "k", "phases", "teacher acc", "Raptor acc", "fraction", "agreement",
                   "last-phase R^2", "fit s"):
        table.add_column(column, justify="right" if column not in ("surrogate", "phases") else "left")
    for phases, name in sorted(candidates.items(), key=lambda item: len(item[0])):
        start = time.perf_counter()
        _, report = fit_raptor(teacher, (x_train, y_train), phases=phases, eval_data=(x_test, y_test),
                               phase_steps=args.phase_steps, joint_steps=args.joint_steps, batch_size=64,
                               lr=1e-3, mlp_ratio=2.0, seed=args.seed)
        spans = " | ".join(f"{p[0]}-{p[-1]}" if len(p) > 1 else f"{p[0]}" for p in report.phases)
        table.add_row(name, str(report.num_phases), spans, f"{report.teacher_accuracy:.3f}",
                      f"{report.surrogate_accuracy:.3f}", f"{report.accuracy_fraction:.3f}",
                      f"{report.agreement:.3f}", f"{report.phase_r2[-1]:.3f}", f"{time.perf_counter() - start:.0f}")
        console.print(f"{name}: k = {report.num_phases}, phases {spans}, teacher {report.teacher_accuracy:.3f}, "
                      f"Raptor {report.surrogate_accuracy:.3f} ({report.accuracy_fraction:.3f} of it)")
    console.print(table)


if __name__ == "__main__":
    main()
