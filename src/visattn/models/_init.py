"""The weight init that ViT-style models apply to every submodule (``model.apply(...)``): weights of the given layer
types from a truncated normal ``N(0, std^2)`` cut at +-2 (timm's ``trunc_normal_``), biases zero — the init of
ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv 2010.11929) that NAT / DiNAT (arXiv 2204.07143,
2209.15001), DependencyViT (arXiv 2304.03282) and L2ViT (arXiv 2501.16182) use."""

from __future__ import annotations

from timm.layers import trunc_normal_
from torch import nn

__all__ = ["trunc_normal_init"]


def trunc_normal_init(module: nn.Module, types: tuple[type[nn.Module], ...] = (nn.Linear,), std: float = 0.02,
                      reset_layer_norm: bool = False) -> None:
    """Init ``module`` alone (not its children; use ``model.apply``): ``W ~ TruncNormal(0, std^2, -2, 2)`` and
    ``b = 0`` when it is one of ``types``; with ``reset_layer_norm``, an ``nn.LayerNorm`` back to ``gamma = 1``,
    ``beta = 0``. Other modules are left as they are."""
    if isinstance(module, types):
        trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif reset_layer_norm and isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
