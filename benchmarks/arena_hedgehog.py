"""The arena's softmax model converted to Hedgehog, against Hedgehog trained from scratch in the same arena run.

Paper: Zhang et al., "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry"
(arXiv 2402.04347): a trained softmax transformer converts to linear attention with little loss, by distilling
feature maps ``phi(x) = [exp(W x + b), exp(-(W x + b))]`` that mimic its softmax weights, then fine-tuning.

Reads a finished arena run that trained ``softmax`` (and, for the comparison, ``hedgehog``) and converts the
softmax checkpoint with :func:`visattn.train.convert.convert` on the run's own training data; prints the teacher's
accuracy, the converted model's after distillation and after fine-tuning, and the from-scratch Hedgehog's::

    visattn arena --mixers softmax hedgehog --task digits --out runs/hedgehog
    python benchmarks/arena_hedgehog.py runs/hedgehog
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from visattn.bench.case import BenchCase
from visattn.tasks.procedural import make_split
from visattn.train.arena import ArenaConfig, build_model
from visattn.train.checkpoint import load_checkpoint
from visattn.train.convert import convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an arena --out folder with a finished softmax run")
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    saved = json.loads((args.run / "results.json").read_text())
    config = saved["config"]
    arena = ArenaConfig(mixers=(BenchCase("softmax"),), task=config["task"], size=config["size"],
                        eval_sizes=(config["size"],), model=config["model"], model_kwargs=config["model_kwargs"])
    teacher = build_model(arena, BenchCase("softmax"))
    teacher.load_state_dict(load_checkpoint(args.run / "softmax" / "checkpoint.pt")["model"])
    images, labels = make_split(arena.task, arena.size, config["train_count"], config["data_seed"], "train")
    test_images, test_labels = make_split(arena.task, arena.size, config["test_count"], config["data_seed"], "test")
    batches = [(images[i:i + args.batch], labels[i:i + args.batch]) for i in range(0, len(labels), args.batch)]
    test = [(test_images[i:i + 256], test_labels[i:i + 256]) for i in range(0, len(test_labels), 256)]
    torch.manual_seed(0)
    _, report = convert(teacher, "hedgehog", batches, eval_data=test, distill_steps=args.distill_steps,
                        finetune_steps=args.finetune_steps)
    print(report.summary())
    scratch = {r["label"]: r for r in saved["results"]}.get("hedgehog")
    if scratch is not None:
        print(f"hedgehog trained from scratch in the arena ({config['train']['steps']} steps): "
              f"{scratch['accuracy'][str(arena.size)]:.4f}")


if __name__ == "__main__":
    main()
