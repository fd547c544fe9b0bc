"""OAT vs the saliency-order baseline on generated object displays (sequence score, Levenshtein).

Scanpaths come from the greedy target-similarity searcher of ``visattn.search.object_displays`` (not eccNET: a
stand-in that runs in seconds). OAT (random-init timm ResNet-10t crops, d = 64, 4 heads, 2 + 2 layers, positional
tables pre-trained on the cosine prior) is trained with teacher forcing on fresh displays each step, then predicts
greedily on 200 held-out displays; the saliency baseline fixates by brightness. Both are scored against the
searcher's scanpaths in this run.

    python benchmarks/oat_vs_saliency.py [--steps 300]
"""

import argparse

import torch

from visattn.search.oat import OAT, oat_loss, scanpath_targets
from visattn.search.object_displays import generate_displays, greedy_search_scanpath, saliency_order_scanpath
from visattn.search.scanpath_metrics import levenshtein, sequence_score


def _mean(metric, preds, truth):
    return sum(metric(p, t) for p, t in zip(preds, truth, strict=True)) / len(truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--objects", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    grid, num = (4, 4), args.objects
    model = OAT("resnet10t", grid=grid, dim=64, num_heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0)
    model.position.pretrain(steps=200)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(args.steps):
        d = generate_displays(32, num, grid, seed=step + 1000)
        inputs, targets = scanpath_targets(greedy_search_scanpath(d, grid), num, max_len=num)
        loss = oat_loss(model(d.crops, d.target, d.cells, inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    d = generate_displays(200, num, grid, seed=7)
    truth, saliency = greedy_search_scanpath(d, grid), saliency_order_scanpath(d)
    pred = [[o for o in row if o >= 0] for row in model.generate(d.crops, d.target, d.cells, max_len=num + 1).tolist()]
    ss_oat, ss_sal = _mean(sequence_score, pred, truth), _mean(sequence_score, saliency, truth)
    print(f"final training loss {loss.item():.3f}")
    print(f"sequence score: OAT {ss_oat:.3f}, saliency order {ss_sal:.3f} (ratio {ss_oat / ss_sal:.2f}); "
          f"Levenshtein: OAT {_mean(levenshtein, pred, truth):.2f}, saliency {_mean(levenshtein, saliency, truth):.2f}")


if __name__ == "__main__":
    main()
