"""OAT trained on eccNET scanpaths vs the saliency-order baseline on generated object displays.

Scanpaths come from eccNET's own fixation loop (``visattn.search.object_displays.eccnet_scanpath``): each display
(6 coloured squares of 16 px on a 4 x 4 grid of 24 px cells, 96 px) is rendered and searched by ``EccNet`` on a
small random-init pooling CNN (five conv-ReLU-maxpool stages, 16-32 channels) with eccentricity pooling scaled to
the display (``SMALL_ECCENTRICITY``: rings at pools 3-4), top-down target modulation, DoG smoothing and inhibition
of return; fixations map to the object whose cell holds them. OAT (random-init timm ResNet-10t crops, d = 64,
4 heads, 2 + 2 layers, positional tables pre-trained on the cosine prior) is trained with teacher forcing on a pool
of such displays, then predicts greedily on held-out displays. Baselines scored against the same eccNET scanpaths:
the saliency order (brightness), and the greedy target-similarity searcher. Mean sequence score (Needleman-Wunsch,
match 1 / mismatch 0 / gap 0, over the longer length) and Levenshtein distance, all measured in this run.

    python benchmarks/oat_vs_saliency.py [--steps 300] [--train 2048] [--searcher eccnet|greedy] [--seed 0]
"""

import argparse
import time

import torch

from visattn.search.eccnet import EccentricityConfig, EccNet, vgg_like_backbone
from visattn.search.oat import OAT, oat_loss, scanpath_targets
from visattn.search.object_displays import (
    ObjectDisplay,
    eccnet_scanpath,
    generate_displays,
    greedy_search_scanpath,
    saliency_order_scanpath,
)
from visattn.search.scanpath_metrics import levenshtein, sequence_score

GRID, CELL_PX = (4, 4), 24
SMALL_ECCENTRICITY = EccentricityConfig(slopes=(0, 0, 0.15, 0.3, 0.6), deg2px=(8, 4, 2, 2, 2), fovea=4.0)


def _mean(metric, preds, truth):
    return sum(metric(p, t) for p, t in zip(preds, truth, strict=True)) / len(truth)


def _subset(d: ObjectDisplay, index: torch.Tensor) -> ObjectDisplay:
    return ObjectDisplay(d.crops[index], d.target[index], d.cells[index], d.colours[index], d.target_index[index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train", type=int, default=2048, help="training displays (scanpaths computed once)")
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--searcher", choices=("eccnet", "greedy"), default="eccnet")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0,
                        help="displays and OAT initialisation (the eccNET searcher stays the seed-0 one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num = args.objects
    searcher = EccNet(vgg_like_backbone(), eccentricity=SMALL_ECCENTRICITY)
    if args.seed:
        torch.manual_seed(args.seed)
    offset = 100_003 * args.seed

    def scanpaths(d: ObjectDisplay) -> list[list[int]]:
        if args.searcher == "greedy":
            return greedy_search_scanpath(d, GRID)
        return eccnet_scanpath(searcher, d, GRID, cell_px=CELL_PX)

    start = time.perf_counter()
    train = generate_displays(args.train, num, GRID, seed=1000 + offset)
    train_paths = scanpaths(train)
    test = generate_displays(args.test, num, GRID, seed=7 + offset)
    truth = scanpaths(test)
    fixations = sum(len(p) for p in train_paths + truth)
    label = time.perf_counter() - start
    print(f"{args.searcher} scanpaths: {args.train} + {args.test} displays, {fixations} fixations in {label:.1f} s; "
          f"mean length {fixations / (args.train + args.test):.2f}, first fixation on the target "
          f"{sum(len(p) == 1 for p in truth) / len(truth):.2f} (chance {1 / num:.2f})")

    model = OAT("resnet10t", grid=GRID, dim=64, num_heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0)
    model.position.pretrain(steps=200)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1 + args.seed)
    start = time.perf_counter()
    for _ in range(args.steps):
        index = torch.randint(0, args.train, (32,), generator=gen)
        d = _subset(train, index)
        inputs, targets = scanpath_targets([train_paths[i] for i in index.tolist()], num, max_len=num)
        loss = oat_loss(model(d.crops, d.target, d.cells, inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    pred = [[o for o in row if o >= 0]
            for row in model.generate(test.crops, test.target, test.cells, max_len=num + 1).tolist()]
    print(f"OAT: {args.steps} steps of 32 in {time.perf_counter() - start:.0f} s, "
          f"final training loss {loss.item():.3f}")
    rows = {"OAT": pred, "saliency order": saliency_order_scanpath(test)}
    if args.searcher != "greedy":
        rows["greedy searcher"] = greedy_search_scanpath(test, GRID)
    base = _mean(sequence_score, rows["saliency order"], truth)
    for name, paths in rows.items():
        score = _mean(sequence_score, paths, truth)
        print(f"{name:16s} sequence score {score:.3f} (x{score / base:.2f} of saliency), "
              f"Levenshtein {_mean(levenshtein, paths, truth):.2f}")


if __name__ == "__main__":
    main()
