"""A tiny ViT and data set shared by the trainer and distributed tests (picklable for spawned processes)."""

from __future__ import annotations

import torch

from visattn.tasks.procedural import make_split

SIZE = 16


def build_vit(mixer: str = "softmax") -> torch.nn.Module:
    import timm

    import visattn.models  # noqa: F401  (registers visattn_*)

    return timm.create_model("visattn_vit_tiny_patch16_224", mixer=mixer, img_size=SIZE, patch_size=4, embed_dim=32,
                             depth=1, num_heads=2, num_classes=2, in_chans=1, dynamic_img_size=True)


def data(count: int = 64, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    return make_split("search", SIZE, count, seed=0, split=split)
