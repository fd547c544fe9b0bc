"""MORPH on generated PDE data: accuracy against persistence, fine-tuning (scratch / full / LoRA), and speed and
peak memory at the published input sizes against the same network with full spatio-temporal attention.

    python benchmarks/morph_pde.py accuracy [--steps 300]     # one-step and rollout nRMSE vs persistence
    python benchmarks/morph_pde.py finetune [--steps 150]     # heat -> Burgers: scratch vs full vs LoRA
    python benchmarks/morph_pde.py speed [--sizes Ti S]       # samples/s and peak memory, axial vs full attention

accuracy: a small MORPH (dim 64, 2 blocks, patch 4) trains ``--steps`` AdamW steps on 24 normalised trajectories of
12 states of each equation (2-D 32 x 32 heat and Burgers, 1-D 64 Burgers, 3-D 12^3 heat; states ``dt`` apart) and is
scored on 8 held-out trajectories: one-step nRMSE over every window and the rollout nRMSE of the first ``--horizon``
steps, each beside persistence (the last state) and as the ratio model / persistence (below 1: better than
persistence). Two heads: ``state`` predicts the next state (MORPH's) and ``residual`` the change from the last
state (``Morph(residual=True)``).

finetune: pretrain on 2-D heat, then train on 2-D Burgers for the same steps from scratch, fully fine-tuned, with
LoRA adapters only (peft; ranks 8/6 on this small model) and with the adapters and the decoder; the one-step nRMSE of
each and the trainable parameters.

speed: MORPH of each size on the release's example input (F = 2 fields, C = 1, 128 x 128, T = 1; a 3-D 64^3 case
with ``--grid 64 64 64``): forward and training-step samples/s and peak memory (visattn.bench.memory), and the
paired time ratio against the same network whose blocks use one full attention over all T x D' x H' x W' tokens
(what axial attention factorises; above 1: axial is faster).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import Tensor, nn

from visattn.bench.memory import peak_memory_bytes
from visattn.bench.paired import paired_ratio
from visattn.models.morph import Morph, create_morph
from visattn.tasks import pde

SMALL = dict(dim=64, depth=2, heads=4, mlp_dim=128, patch_size=4, heads_xa=4, max_patches=512, dropout=0.0,
             emb_dropout=0.0)
CASES = {
    "heat 2-D 32x32 dt 0.1": ("heat", (32, 32), 0.1),
    "heat 2-D 32x32 dt 0.3": ("heat", (32, 32), 0.3),
    "burgers 2-D 32x32 dt 0.1": ("burgers", (32, 32), 0.1),
    "burgers 1-D 64 dt 0.1": ("burgers", (64,), 0.1),
    "heat 3-D 12^3 dt 0.3": ("heat", (12, 12, 12), 0.3),
}


def _data(equation: str, grid: tuple[int, ...], seed: int, dt: float = 0.1) -> tuple[Tensor, Tensor]:
    train = pde.generate(equation, grid, 24, 12, seed=seed, dt=dt)
    test = pde.generate(equation, grid, 8, 12, seed=seed + 1000, dt=dt)
    train, test, _, _ = pde.normalise(train, test)
    return train, test


def accuracy(args: argparse.Namespace) -> None:
    print(f"| case | predicts | steps | one-step MORPH | one-step persistence | ratio | rollout ({args.horizon}) "
          "MORPH | rollout persistence | ratio | train CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (equation, grid, dt) in CASES.items():
        if args.cases and not any(name.startswith(case) for case in args.cases):
            continue
        train, test = _data(equation, grid, args.seed, dt)
        for residual in (False, True):
            torch.manual_seed(args.seed)
            model = Morph(**SMALL, residual=residual)
            start = time.process_time()
            pde.train(model, train, args.steps, lr=args.lr, seed=args.seed)
            seconds = time.process_time() - start
            step, still = pde.one_step_error(model, test)
            roll, roll_still = pde.rollout_error(model, test, args.horizon)
            print(f"| {name} | {'residual' if residual else 'state'} | {args.steps} | {step:.4f} | {still:.4f} | "
                  f"{step / still:.2f} | {roll.mean():.4f} | {roll_still.mean():.4f} | "
                  f"{roll.mean() / roll_still.mean():.2f} | {seconds:.0f} |", flush=True)


def finetune(args: argparse.Namespace) -> None:
    heat, _ = _data("heat", (32, 32), args.seed)
    burgers, burgers_test = _data("burgers", (32, 32), args.seed + 1)
    torch.manual_seed(args.seed)
    pretrained = Morph(**SMALL)
    pde.train(pretrained, heat, args.steps, lr=args.lr, seed=args.seed)
    print("| Burgers 2-D after | trainable params | one-step nRMSE | persistence |")
    print("|---|---|---|---|")
    torch.manual_seed(args.seed)
    runs = {"scratch": Morph(**SMALL), "full fine-tuning": copy.deepcopy(pretrained),
            "LoRA (r 8, MLP 6)": pde.lora(copy.deepcopy(pretrained), rank=8, mlp_rank=6),
            "LoRA + decoder": pde.lora(copy.deepcopy(pretrained), rank=8, mlp_rank=6, also_train=("head",))}
    for label, model in runs.items():
        pde.train(model, burgers, args.steps, lr=args.lr, seed=args.seed)
        step, still = pde.one_step_error(model, burgers_test)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"| {label} ({args.steps} steps) | {trainable:,} | {step:.4f} | {still:.4f} |", flush=True)


class FullAttention(nn.Module):
    """The alternative to MORPH's axial attention: one multi-head attention over all ``T x D' x H' x W'`` tokens
    (same qkv/proj shapes as one axial line attention), with the same residual form ``x + A(x)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        tokens = x.reshape(shape[0], -1, shape[-1])
        q, k, v = self.qkv(tokens).reshape(shape[0], tokens.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(tokens.shape)
        return x + self.proj(out).reshape(shape)


def _full_attention_copy(model: Morph, heads: int) -> Morph:
    other = copy.deepcopy(model)
    for block in other.blocks:
        block.attn = FullAttention(model.dim, heads)
    return other


def _train_step(model: nn.Module, x: Tensor, target: Tensor, optimizer: torch.optim.Optimizer):
    def run() -> None:
        loss = nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def _forward(model: nn.Module, x: Tensor):
    def run() -> None:
        with torch.no_grad():
            model(x)
    return run


def speed(args: argparse.Namespace) -> None:
    grid = tuple(args.grid)
    shape = (args.batch, 1, 2, 1, *(1,) * (3 - len(grid)), *grid)
    print(f"input {shape}, {torch.get_num_threads()} threads")
    print("| size | params (M) | pass | samples/s | peak MB | full-attention samples/s | full-attention peak MB | "
          "axial / full speed ratio (low-high) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        torch.manual_seed(0)
        model = create_morph(size, dropout=0.0, emb_dropout=0.0)
        heads = model.blocks[0].attn.time.num_heads
        full = _full_attention_copy(model, heads)
        x = torch.randn(shape)
        target = torch.randn(shape[0], *shape[2:])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        passes = {"forward": (_forward(model.eval(), x), _forward(full.eval(), x))}
        if size in args.train_sizes:
            model.train(), full.train()
            passes["train step"] = (_train_step(model, x, target, torch.optim.AdamW(model.parameters())),
                                    _train_step(full, x, target, torch.optim.AdamW(full.parameters())))
        for label, (ours, theirs) in passes.items():
            ratio = paired_ratio(theirs, ours, args.rounds, 1)
            ours_mb = (peak_memory_bytes(ours) or 0) / 2 ** 20
            theirs_mb = (peak_memory_bytes(theirs) or 0) / 2 ** 20
            print(f"| {size} | {params:.1f} | {label} | {args.batch * 1000 / ratio.ours_ms:.2f} | {ours_mb:.0f} | "
                  f"{args.batch * 1000 / ratio.theirs_ms:.2f} | {theirs_mb:.0f} | {ratio.ratio:.2f}x "
                  f"({ratio.low:.2f}-{ratio.high:.2f}) |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--steps", type=int, default=300)
    acc.add_argument("--horizon", type=int, default=5)
    acc.add_argument("--lr", type=float, default=1e-3)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--cases", nargs="*", default=[], help="name prefixes, e.g. 'heat 2-D' (default all)")
    fine = sub.add_parser("finetune")
    fine.add_argument("--steps", type=int, default=150)
    fine.add_argument("--lr", type=float, default=1e-3)
    fine.add_argument("--seed", type=int, default=0)
    fast = sub.add_parser("speed")
    fast.add_argument("--sizes", nargs="+", default=["Ti", "S", "M", "L"])
    fast.add_argument("--train-sizes", nargs="*", default=["Ti", "S"])
    fast.add_argument("--grid", type=int, nargs="+", default=[128, 128])
    fast.add_argument("--batch", type=int, default=1)
    fast.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models gain nothing from more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"accuracy": accuracy, "finetune": finetune, "speed": speed}[args.command](args)


if __name__ == "__main__":
    main()
