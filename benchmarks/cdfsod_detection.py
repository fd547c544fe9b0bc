"""Cross-domain few-shot detection with and without the centre-periphery refiner (arXiv 2603.18541), on CPU.

A tiny Conditional DETR (random init, trainable backbone) is trained once on the generated "source" domain (the
weights are cached outside the repository, keyed by the pretraining settings), then, for each seed (a new target
support set and query set), fine-tuned on the few-shot "target" support set twice from the same weights, with the
same seed and steps: plain, and with PPR + NCM + TSA attached (visattn.models.cdfsod). Both are scored by COCO mAP
(pycocotools) on held-out target queries, and the encoder's mean attention distance is reported per layer: source
vs target before fine-tuning (the paper's astigmatism) and on target after each fine-tuning. All differences are
measured in this run.

    python benchmarks/cdfsod_detection.py --seeds 3 [--shots 16] [--gamma-init 0.5 --ncm-init 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch

from visattn.models.cdfsod import CenterPeripheryRefiner, attach_cdfsod
from visattn.tasks import detection as det


def _map(model, images, boxes, labels) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        return det.mean_average_precision(det.predict(model, images), boxes, labels)


def _build(args: argparse.Namespace) -> torch.nn.Module:
    return det.tiny_detr(d_model=args.dim, layers=args.layers, queries=args.queries_per_image, stride=args.stride,
                         kind=args.kind)


def pretrain(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    """Source-domain training, or its cached weights; returns the model and where the weights came from."""
    import transformers

    keys = ("kind", "dim", "layers", "queries_per_image", "stride", "size", "pretrain", "pretrain_lr",
            "source_images", "batch_size")
    settings = {k: getattr(args, k) for k in keys} | {"transformers": transformers.__version__,
                                                       "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(args.cache_dir).expanduser() / f"source-{digest}.pt"
    torch.manual_seed(0)
    base = _build(args)
    if path.exists() and not args.no_cache:
        base.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        base.eval()
        return base, f"cached {path}"
    g = torch.Generator().manual_seed(10_000)
    src = det.shapes_scenes(args.source_images, "source", args.size, g)
    start = time.perf_counter()
    det.finetune_detector(base, *src, steps=args.pretrain, lr=args.pretrain_lr, batch_size=args.batch_size,
                          generator=g)
    seconds = time.perf_counter() - start
    if not args.no_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(base.state_dict(), path)
    return base, f"trained {args.pretrain} steps in {seconds:.0f} s" + ("" if args.no_cache else f", saved {path}")


def run(base: torch.nn.Module, seed: int, args: argparse.Namespace) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    support = det.shapes_scenes(args.shots, "target", args.size, g)
    query = det.shapes_scenes(args.queries, "target", args.size, g)
    src_query = det.shapes_scenes(args.queries, "source", args.size, g)
    row: dict[str, object] = {
        "source_map": _map(base, *src_query),
        "target_map_before": _map(base, *query),
        "dist_source": det.attention_distances(base, src_query[0]).tolist(),
        "dist_target": det.attention_distances(base, query[0]).tolist(),
    }
    start = time.perf_counter()
    torch.manual_seed(seed)
    plain = copy.deepcopy(base)
    det.finetune_detector(plain, *support, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                          generator=torch.Generator().manual_seed(seed))
    row["seconds_plain"] = time.perf_counter() - start
    start = time.perf_counter()
    torch.manual_seed(seed)
    refined = copy.deepcopy(base)
    text = torch.randn(len(det.CLASSES), 16, generator=torch.Generator().manual_seed(seed + 100))
    refiner = CenterPeripheryRefiner(args.dim, len(det.CLASSES), text)
    with torch.no_grad():
        refiner.ppr.gamma.fill_(args.gamma_init)
        refiner.ncm.strength.fill_(args.ncm_init)
    attach_cdfsod(refined, refiner)
    det.finetune_detector(refined, *support, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                          refiner=refiner, refiner_lr=args.refiner_lr, generator=torch.Generator().manual_seed(seed))
    row["seconds_refined"] = time.perf_counter() - start
    row["gates"] = (float(refiner.ppr.gamma.detach()), float(refiner.ncm.strength.detach()))
    row["plain_map"] = _map(plain, *query)
    row["refined_map"] = _map(refined, *query)
    row["plain_source_map"] = _map(plain, *src_query)
    row["dist_target_plain"] = det.attention_distances(plain, query[0]).tolist()
    row["dist_target_refined"] = det.attention_distances(refined, query[0]).tolist()
    return row


def _fmt(xs) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--kind", choices=("conditional", "detr"), default="conditional")
    parser.add_argument("--pretrain", type=int, default=3000, help="source-domain steps")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=300, help="few-shot fine-tuning steps")
    parser.add_argument("--lr", type=float, default=5e-4, help="few-shot fine-tuning learning rate")
    parser.add_argument("--refiner-lr", type=float, default=2e-3, help="learning rate of the new refiner's parameters")
    parser.add_argument("--gamma-init", type=float, default=0.0, help="PPR's starting gamma (0: identity at start)")
    parser.add_argument("--ncm-init", type=float, default=0.0, help="NCM's starting strength g (0: identity)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--queries-per-image", type=int, default=8, help="object queries of the detector")
    parser.add_argument("--stride", type=int, default=8, help="feature stride of the tiny detector's backbone")
    parser.add_argument("--shots", type=int, default=8, help="target support images")
    parser.add_argument("--queries", type=int, default=64, help="held-out query images per domain")
    parser.add_argument("--source-images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                                            "visattn", "cdfsod"))
    parser.add_argument("--no-cache", action="store_true", help="retrain the source model and do not save it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    base, origin = pretrain(args)
    print(f"source model: {origin}")
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        row = run(base, seed, args)
        rows.append(row)
        print(f"seed {seed}: source mAP {row['source_map']['map']:.3f} / mAP50 {row['source_map']['map_50']:.3f}, "
              f"target before fine-tuning {row['target_map_before']['map']:.3f} / "
              f"{row['target_map_before']['map_50']:.3f} | plain {row['plain_map']['map']:.3f} / "
              f"{row['plain_map']['map_50']:.3f} | refined {row['refined_map']['map']:.3f} / "
              f"{row['refined_map']['map_50']:.3f} | fine-tuning s plain {row['seconds_plain']:.0f}, refined "
              f"{row['seconds_refined']:.0f} | learned PPR gamma {row['gates'][0]:+.3f}, NCM strength "
              f"{row['gates'][1]:+.3f}", flush=True)
        print(f"  attention distance per encoder layer (cells): source {_fmt(row['dist_source'])}, target "
              f"{_fmt(row['dist_target'])}, target after plain {_fmt(row['dist_target_plain'])}, after refined "
              f"{_fmt(row['dist_target_refined'])}", flush=True)
    for key in ("map", "map_50"):
        plain = [r["plain_map"][key] for r in rows]
        refined = [r["refined_map"][key] for r in rows]
        before = [r["target_map_before"][key] for r in rows]
        wins = sum(b > a for a, b in zip(plain, refined, strict=True))
        gain = statistics.mean(refined) - statistics.mean(plain)
        print(f"target {key}: before {statistics.mean(before):.3f}, plain {statistics.mean(plain):.3f}, refined "
              f"{statistics.mean(refined):.3f}, refined - plain {gain:+.3f}, refined wins {wins}/{len(rows)}")
    layers = len(rows[0]["dist_source"])
    per_layer = {k: [statistics.mean(r[k][i] for r in rows) for i in range(layers)]
                 for k in ("dist_source", "dist_target", "dist_target_plain", "dist_target_refined")}
    ratio = lambda a, b: _fmt([x / y for x, y in zip(per_layer[a], per_layer[b], strict=True)])  # noqa: E731
    print(f"mean attention distance per layer (mean over seeds): source {_fmt(per_layer['dist_source'])}, target "
          f"{_fmt(per_layer['dist_target'])} (target/source {ratio('dist_target', 'dist_source')}); after plain "
          f"{_fmt(per_layer['dist_target_plain'])}, after refined {_fmt(per_layer['dist_target_refined'])} "
          f"(refined/plain {ratio('dist_target_refined', 'dist_target_plain')})")

if __name__ == "__main__":
    main()
