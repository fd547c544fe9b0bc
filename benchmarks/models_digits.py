"""Digits accuracy of the paper models (issue 16's target: each model trains on upscaled scikit-learn digits for a
few hundred steps on CPU and reaches a stated accuracy).

Every family below is built as its registered ``visattn_*`` model with narrow widths (the depths of its test file's
tiny configuration) and trained from scratch, seeded, with one shared loop: AdamW (weight decay 0.05 on matrices),
linear warm-up over a tenth of the steps then cosine to zero, batches of 64 drawn from the 1,437 training digits;
accuracy on the 360 held-out digits (every fifth image: ``visattn.tasks.digits.heldout_digits``, the split
``benchmarks/sparsifiner_digits.py`` uses too). Chance is 10 %.

Run: ``python benchmarks/models_digits.py`` (``--steps`` 300, ``--seed`` 0, ``--only l2vit fasternet ...``,
``--threads`` 1). Prints a Markdown table; train time is wall time on whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from visattn.tasks.digits import heldout_digits
from visattn.train.trainer import warmup_cosine

BATCH = 64


@dataclass(frozen=True)
class Family:
    """One registered model at a small configuration, with the learning rate it is trained at."""

    key: str
    model: str
    img_size: int
    lr: float
    kwargs: dict[str, Any] = field(default_factory=dict)
    size_kwarg: bool = True

    def build(self) -> torch.nn.Module:
        extra = dict(img_size=self.img_size) if self.size_kwarg else {}
        return timm.create_model(self.model, num_classes=10, **extra, **self.kwargs)

    def config(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items()).replace(" ", "")


_VIT = dict(patch_size=4, embed_dim=64, depth=4, num_heads=4)
FAMILIES = (
    Family("l2vit", "visattn_l2vit_tiny", 32, 2e-3,
           dict(dims=(16, 32, 32, 64), depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4), size_kwarg=False),
    Family("inline_deit", "visattn_inline_deit_tiny", 32, 2e-3, dict(_VIT)),
    Family("inline_swin", "visattn_inline_swin_tiny", 32, 2e-3,
           dict(embed_dim=32, num_heads=(1, 2, 2, 4), depths=(2, 2, 2, 2), attn_types="IIIS")),
    Family("fasternet", "visattn_fasternet_t0", 32, 2e-3, dict(embed_dim=16, depths=(1, 2, 1, 1), feature_dim=64),
           size_kwarg=False),
    Family("patnet", "visattn_patnet_t1", 32, 2e-3, dict(embed_dim=16, depths=(1, 2, 1, 1), feature_dim=64),
           size_kwarg=False),
    Family("dependencyvit", "visattn_dependencyvit_tiny_patch16_224", 32, 3e-3, dict(_VIT)),
    Family("infvit", "visattn_infvit_linear_patch16_224", 32, 1e-3, dict(_VIT, representation_size=0)),
)


@dataclass(frozen=True)
class Result:
    family: Family
    steps: int
    seconds: float
    accuracy: float
    final_loss: float


def train_and_evaluate(family: Family, steps: int, seed: int) -> Result:
    """Train ``family``'s model ``steps`` AdamW steps on the training digits; held-out accuracy."""
    (train_x, train_y), (test_x, test_y) = heldout_digits(family.img_size, channels=3)
    torch.manual_seed(seed)
    model = family.build()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=0.05), dict(params=rest, weight_decay=0.0)],
                                  lr=family.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, max(1, steps // 10)))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_y), generator=generator)
    cursor = 0
    model.train()
    start = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(steps):
        if cursor + BATCH > len(order):
            order, cursor = torch.randperm(len(train_y), generator=generator), 0
        idx = order[cursor:cursor + BATCH]
        cursor += BATCH
        loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(test_x[i:i + 256]).argmax(-1) for i in range(0, len(test_y), 256)])
    accuracy = float((predicted == test_y).float().mean())
    return Result(family, steps, seconds, accuracy, float(loss.detach()))


def table(results: list[Result]) -> str:
    lines = ["| model | config | input px | steps | lr | train time | held-out accuracy | chance |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        f = r.family
        lines.append(f"| `{f.model}` | `{f.config()}` | {f.img_size} | {r.steps} | {f.lr:g} | {r.seconds:.0f} s | "
                     f"{100 * r.accuracy:.2f} % | 10 % |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=[f.key for f in FAMILIES], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for family in FAMILIES:
        if args.only and family.key not in args.only:
            continue
        results.append(train_and_evaluate(family, args.steps, args.seed))
        r = results[-1]
        print(f"{family.key}: {100 * r.accuracy:.2f} % in {r.seconds:.0f} s (last loss {r.final_loss:.3f})",
              file=sys.stderr, flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
