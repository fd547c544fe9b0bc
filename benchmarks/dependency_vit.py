"""DependencyViT (arXiv 2304.03282): speed of Tiny and Lite-Tiny against a softmax ViT of the same size, and a small
DependencyViT trained on upscaled digits with its dependency tree drawn over a test digit.

``speed``: forward images/s ratios at ``--img-size`` (224), batch ``--batch`` (8), fp32, random weights, timed in
interleaved bursts (``visattn.bench.paired_ratio``) so that both sides of a ratio see the same machine load:
DependencyViT-Lite-T / DependencyViT-T (what Lite's pruning buys) and DependencyViT-T / a ViT of the same size
(192 channels, 12 blocks, 12 heads, no class token, average pooling: timm's ``VisionTransformer`` with SDPA; what
reversed attention costs: its ``A_F^T`` is no softmax over keys, so SDPA does not apply).

``digits``: ``visattn.tasks.procedural.make_split("digits", 32, ...)`` (held-out test digits), a DependencyViT of
``--embed-dim`` (32) channels, 4 blocks, 4 heads, 4 x 4 patches (64 tokens), its Lite version (pruning after
blocks 2 and 3) and the same ViT with softmax attention, each trained ``--steps`` steps with
``visattn.train.Trainer``; prints test accuracies and writes ``dependency_tree.png`` (the trained Tiny's tree
over a test digit) to ``--out``.

Run: ``python benchmarks/dependency_vit.py speed`` / ``python benchmarks/dependency_vit.py digits --out /tmp/dvit``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from _common import set_threads
from visattn.bench.paired import inference_call, paired_ratio
from visattn.models.dependency_tree import dependency_tree_figure, is_tree

TINY = "visattn_dependencyvit_tiny_patch16_224"
LITE = "visattn_dependencyvit_lite_tiny_patch16_224"


def softmax_twin(**kwargs) -> VisionTransformer:
    """timm's ViT with DependencyViT's layout (no class token, average pooling, no qkv bias, LayerScale 1e-6)."""
    return VisionTransformer(class_token=False, global_pool="avg", fc_norm=False, qkv_bias=False, init_values=1e-6,
                             **kwargs)


def speed(args: argparse.Namespace) -> None:
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    torch.manual_seed(0)
    tiny = timm.create_model(TINY, img_size=args.img_size).eval()
    lite = timm.create_model(LITE, img_size=args.img_size).eval()
    vit = softmax_twin(img_size=args.img_size, patch_size=16, embed_dim=192, depth=12, num_heads=12).eval()
    print(f"batch {args.batch}, {args.img_size} px, fp32 forward, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds of {args.calls} calls; Lite keeps {lite.keep_counts} of "
          f"{lite.patch_embed.num_patches} tokens")
    print("| case | what | ratio (median) | range | theirs ms | ours ms |")
    print("|---|---|---|---|---|---|")
    pairs = (("Lite-T / T", "images/s of Lite over Tiny", tiny, lite),
             ("T / ViT", "images/s of DependencyViT-T over the softmax ViT", vit, tiny),
             ("Lite-T / ViT", "images/s of Lite over the softmax ViT", vit, lite))
    for case, what, theirs, ours in pairs:
        result = paired_ratio(inference_call(theirs, x), inference_call(ours, x), args.rounds, args.calls)
        print(result.markdown_row(f"{case} at {args.img_size}", what))


def digits(args: argparse.Namespace) -> None:
    from visattn.tasks.procedural import make_split
    from visattn.train.trainer import TrainConfig, Trainer

    train = make_split("digits", 32, args.train_count, seed=0, split="train")
    test = make_split("digits", 32, 500, seed=0, split="test")
    common = dict(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=args.embed_dim, depth=4,
                  num_heads=4)
    builders = {
        "DependencyViT": lambda: timm.create_model(TINY, **common),
        "DependencyViT-Lite (prune after 2, 3)": lambda: timm.create_model(TINY, prune_layers=(2, 3), **common),
        "softmax ViT (same layout)": lambda: softmax_twin(**common),
    }
    config = TrainConfig(steps=args.steps, batch_size=args.train_batch, lr=args.lr, weight_decay=0.05,
                         warmup_steps=20, eval_every=args.steps, checkpoint_every=args.steps, log_every=10)
    print(f"digits 32 px, {args.train_count} training / 500 held-out test images, {args.steps} steps of "
          f"{args.train_batch}, AdamW lr {args.lr}, warmup 20 + cosine")
    print("| model | parameters | final train loss | test accuracy | train images/s |")
    print("|---|---|---|---|---|")
    trained = {}
    for name, build in builders.items():
        trainer = Trainer(build, train, {"test": test}, config)
        result = trainer.fit()
        accuracy = trainer.evaluate()["test"]["accuracy"]
        print(f"| {name} | {result.parameters:,} | {result.losses[-1]:.3f} | {accuracy:.3f} | "
              f"{result.images_per_s:.0f} |")
        trained[name] = trainer.model.eval()
    model = trained["DependencyViT"]
    image = test[0][:1]
    parent = model.dependency_tree(image)[0]
    assert is_tree(parent)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = dependency_tree_figure(image[0, 0], parent, model.grid_size,
                                 title=f"DependencyViT on a test digit {int(test[1][0])}, last block")
    fig.savefig(out / "dependency_tree.png", dpi=100)
    print(f"tree of test image 0 written to {out / 'dependency_tree.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("speed", "digits"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-count", type=int, default=2000)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--embed-dim", type=int, default=32)
    parser.add_argument("--out", default="dependency_vit_out")
    args = parser.parse_args()
    set_threads(args.threads)
    speed(args) if args.what == "speed" else digits(args)


if __name__ == "__main__":
    main()
