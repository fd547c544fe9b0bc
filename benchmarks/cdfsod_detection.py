"""Cross-domain few-shot detection with and without the centre-periphery refiner (arXiv 2603.18541), on CPU.

A tiny DETR is trained once on the generated "source" domain, then, for each seed (a new target support set and
query set), fine-tuned on the few-shot "target" support set twice from the same weights: plain, and with PPR + NCM
+ TSA attached (visattn.models.cdfsod). Both are scored by COCO mAP
on held-out target queries, and the encoder's mean attention distance is reported per layer: source vs target
before fine-tuning (the paper's astigmatism) and on target after each fine-tuning. Differences are measured in
this run.

    python benchmarks/cdfsod_detection.py --seeds 3 --pretrain 3000 --steps 300
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics

import torch

from visattn.models.cdfsod import CenterPeripheryRefiner, attach_cdfsod
from visattn.tasks import detection as det


def _map(model, images, boxes, labels) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        return det.mean_average_precision(det.predict(model, images), boxes, labels)


def pretrain(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(10_000)
    src = det.shapes_scenes(args.source_images, "source", args.size, g)
    base = det.tiny_detr(d_model=args.dim, layers=2, queries=6, stride=args.stride)
    det.finetune_detector(base, *src, steps=args.pretrain, lr=1e-3, batch_size=16, generator=g)
    return base


def run(base: torch.nn.Module, seed: int, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    support = det.shapes_scenes(args.shots, "target", args.size, g)
    query = det.shapes_scenes(args.queries, "target", args.size, g)
    src_query = det.shapes_scenes(args.queries, "source", args.size, g)
    row: dict[str, object] = {
        "source_map": _map(base, *src_query)["map_50"],
        "target_map_zero_shot": _map(base, *query)["map_50"],
        "dist_source": det.attention_distances(base, src_query[0]).tolist(),
        "dist_target": det.attention_distances(base, query[0]).tolist(),
    }
    plain = copy.deepcopy(base)
    det.finetune_detector(plain, *support, steps=args.steps, lr=args.lr, generator=torch.Generator().manual_seed(seed))
    refined = copy.deepcopy(base)
    text = torch.randn(len(det.CLASSES), 16, generator=torch.Generator().manual_seed(seed + 100))
    refiner = CenterPeripheryRefiner(args.dim, len(det.CLASSES), text)
    attach_cdfsod(refined, refiner)
    det.finetune_detector(refined, *support, steps=args.steps, lr=args.lr, refiner=refiner,
                          generator=torch.Generator().manual_seed(seed))
    row["plain_map"] = _map(plain, *query)
    row["refined_map"] = _map(refined, *query)
    row["dist_target_plain"] = det.attention_distances(plain, query[0]).tolist()
    row["dist_target_refined"] = det.attention_distances(refined, query[0]).tolist()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--stride", type=int, default=8, help="feature stride of the tiny DETR's backbone")
    parser.add_argument("--shots", type=int, default=8, help="target support images")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--source-images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = pretrain(args)
    rows = []
    for seed in range(args.seeds):
        row = run(base, seed, args)
        rows.append(row)
        fmt = lambda xs: "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"  # noqa: E731
        print(f"seed {seed}: mAP50 source {row['source_map']:.3f}, target zero-shot {row['target_map_zero_shot']:.3f}"
              f" | fine-tuned plain map {row['plain_map']['map']:.3f} map50 {row['plain_map']['map_50']:.3f}"
              f" | refined map {row['refined_map']['map']:.3f} map50 {row['refined_map']['map_50']:.3f}")
        print(f"  attention distance per encoder layer (cells): source {fmt(row['dist_source'])}, target "
              f"{fmt(row['dist_target'])}, target after plain {fmt(row['dist_target_plain'])}, after refined "
              f"{fmt(row['dist_target_refined'])}")
    for key in ("map", "map_50"):
        plain = [r["plain_map"][key] for r in rows]
        refined = [r["refined_map"][key] for r in rows]
        wins = sum(b > a for a, b in zip(plain, refined, strict=True))
        print(f"{key}: plain {statistics.mean(plain):.3f}, refined {statistics.mean(refined):.3f}, "
              f"refined - plain"
              f" {statistics.mean(refined) - statistics.mean(plain):+.3f}, refined wins {wins}/{len(rows)}")
    mean = lambda k: statistics.mean(statistics.mean(r[k]) for r in rows)  # noqa: E731
    print(f"mean attention distance (mean over layers, seeds): source {mean('dist_source'):.3f}, target "
          f"{mean('dist_target'):.3f} (target/source {mean('dist_target') / mean('dist_source'):.3f}); after plain "
          f"{mean('dist_target_plain'):.3f}, after refined {mean('dist_target_refined'):.3f} (refined/plain "
          f"{mean('dist_target_refined') / mean('dist_target_plain'):.3f})")


if __name__ == "__main__":
    main()
