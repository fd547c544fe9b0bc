"""A tiny ViT, a tiny MLP and a data set shared by the trainer and distributed tests (importable by their
subprocesses)."""

from __future__ import annotations

import torch

from visattn.tasks.procedural import make_split

SIZE = 16


def build_vit(mixer: str = "softmax") -> torch.nn.Module:
    import timm

    import visattn.models  # noqa: F401  (registers visattn_*)

    return timm.create_model("visattn_vit_tiny_patch16_224", mixer=mixer, img_size=SIZE, patch_size=4, embed_dim=32,
                             depth=1, num_heads=2, num_classes=2, in_chans=1, dynamic_img_size=True)


def build_mlp() -> torch.nn.Module:
    """A model without timm, so that spawned processes start fast."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 32), torch.nn.GELU(),
                               torch.nn.LayerNorm(32), torch.nn.Linear(32, 2))


def data(count: int = 64, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    return make_split("search", SIZE, count, seed=0, split=split)


DDP_CONFIG = dict(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=3, checkpoint_every=3)


def ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One process of a gloo group: trains on ``data()`` and saves rank 0's records and weights to ``out``."""
    import os

    from visattn.train.distributed import init_distributed, shutdown
    from visattn.train.trainer import TrainConfig, Trainer

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        result = Trainer(build_mlp, data(), {"16": data(32, "test")}, TrainConfig(**DDP_CONFIG), context=context,
                         out_dir=out).fit()
        if context.is_main:
            torch.save({"records": result.records, "context": (context.rank, context.world_size, context.backend)},
                       f"{out}/result.pt")
    finally:
        shutdown(context)
