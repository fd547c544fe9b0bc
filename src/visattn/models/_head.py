"""The classifier head shared by models whose ``forward_features`` returns channels-last features ``(B, ..., C)``:
NAT / DiNAT (Hassani et al., arXiv 2204.07143, 2209.15001; maps ``(B, H, W, C)``) and DependencyViT (Ding et al.,
arXiv 2304.03282; tokens ``(B, N, C)``). ``forward_head`` computes ``head(drop(mean_{positions} x))`` (timm's
``global_pool="avg"``) or ``head(drop(x))`` per position (``global_pool=""``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GLOBAL_POOLS", "ChannelsLastHead", "check_global_pool"]

GLOBAL_POOLS = ("avg", "")
"""``"avg"``: mean over all positions; ``""``: no pooling (``forward_head`` keeps the positions)."""


def check_global_pool(global_pool: str) -> str:
    """``global_pool`` if it is one of :data:`GLOBAL_POOLS`; a ValueError naming it otherwise."""
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
    return global_pool


class ChannelsLastHead(nn.Module):
    """timm's classifier interface (``get_classifier``, ``reset_classifier``, ``forward_head``, ``forward``) over
    channels-last features. Subclasses set ``num_features``, ``num_classes``, ``global_pool`` (checked with
    :func:`check_global_pool`), ``norm``, ``head_drop`` (a dropout or ``nn.Identity``) and ``head``, and define
    ``forward_features``."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new linear ``head`` with ``num_classes`` outputs (none when 0) on the device of ``norm``."""
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
        device = self.norm.weight.device if isinstance(self.norm, nn.LayerNorm) else None
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def prune_norm_and_head(self, prune_norm: bool, prune_head: bool) -> None:
        """The end of ``prune_intermediate_layers``: ``norm`` becomes ``nn.Identity`` if ``prune_norm``, then ``head``
        is removed (``reset_classifier(0, "")``: no classes, no pooling) if ``prune_head``."""
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=tuple(range(1, x.ndim - 1)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
