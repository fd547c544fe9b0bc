"""Make a timm ViT or Swin shift-invariant in place with adaptive polyphase anchoring (arXiv 2306.07470).

:func:`make_shift_equivariant` edits a model instance (never its class) with forward hooks and small submodules,
keeping the names of the parameters it keeps, so pretrained weights load with ``strict=False`` (a ViT's
``pos_embed`` is no longer used and its PEG is new):

- ``VisionTransformer``: the input of ``patch_embed`` is anchored with ``p`` = patch size; the absolute position
  embedding (which pins tokens to places) is dropped and a :class:`~visattn.transforms.polyphase_layers.CircularPEG`
  is applied to the patch tokens after the first block (CPVT's placement, circular padding as in the paper).
  Prefix tokens and token pooling are permutation-symmetric, so the logits become invariant to circular shifts.
- ``SwinTransformer``: the input of ``patch_embed`` is anchored (``p`` = patch size), the input of every
  ``PatchMerging`` (``p = 2``), and every ``SwinTransformerBlock`` runs on its input anchored with ``p`` = its
  window and is rolled back after; the shifted-window mask is removed, because on a circular map the wrapped
  windows are genuine neighbours (the paper's treatment). Relative position bias lives inside windows and is kept.

The conversion changes what the model computes (no absolute position embedding, no shifted-window mask, a new
PEG initialised to zero so it starts as the identity): fine-tune after converting. Input sizes must be divisible
by every anchoring stride (no padding).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .polyphase import PolyphaseAnchor
from .polyphase_layers import CircularPEG

__all__ = ["make_shift_equivariant"]


def _anchor_input_hook(anchor: PolyphaseAnchor):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (anchor(args[0]), *args[1:])

    return hook


def _vit(model: nn.Module) -> nn.Module:
    patch_embed = model.patch_embed
    patch_embed.anchor = PolyphaseAnchor(tuple(patch_embed.patch_size))
    patch_embed.register_forward_pre_hook(_anchor_input_hook(patch_embed.anchor))
    model.pos_embed = None
    dim = model.embed_dim
    ref = next(model.parameters())
    peg = CircularPEG(dim).to(device=ref.device, dtype=ref.dtype)
    nn.init.zeros_(peg.proj.weight)
    nn.init.zeros_(peg.proj.bias)
    first = model.blocks[0]
    first.peg = peg
    prefix = model.num_prefix_tokens

    def after_first_block(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        tokens = out[:, prefix:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"the PEG needs a square token grid, got {tokens.shape[1]} patch tokens")
        grid = tokens.transpose(1, 2).reshape(out.shape[0], dim, side, side)
        tokens = module.peg(grid).flatten(2).transpose(1, 2)
        return torch.cat((out[:, :prefix], tokens), dim=1)

    first.register_forward_hook(after_first_block)
    return model


def _swin(model: nn.Module) -> nn.Module:
    from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock

    patch_embed = model.patch_embed
    patch_embed.anchor = PolyphaseAnchor(tuple(patch_embed.patch_size))
    patch_embed.register_forward_pre_hook(_anchor_input_hook(patch_embed.anchor))
    if getattr(model, "absolute_pos_embed", None) is not None:
        model.absolute_pos_embed = None
    for module in model.modules():
        if isinstance(module, PatchMerging):
            module.anchor = PolyphaseAnchor(2, channels_last=True)
            module.register_forward_pre_hook(_anchor_input_hook(module.anchor))
        elif isinstance(module, SwinTransformerBlock):
            module.attn_mask = None
            module.dynamic_mask = False
            module.anchor = PolyphaseAnchor(tuple(module.window_size), channels_last=True)
            module.register_forward_pre_hook(_block_pre_hook, with_kwargs=False)
            module.register_forward_hook(_block_post_hook)
    return model


def _block_pre_hook(module: nn.Module, args: tuple) -> tuple:
    anchored, shift = module.anchor.anchor(args[0])
    module._anchor_shift = shift
    return (anchored, *args[1:])


def _block_post_hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
    shift = module._anchor_shift
    module._anchor_shift = None
    return module.anchor.unanchor(out, shift)


def make_shift_equivariant(model: nn.Module) -> nn.Module:
    """Convert a timm ``VisionTransformer`` or ``SwinTransformer`` in place (and return it) so that its logits are
    invariant to circular shifts of the input image; see the module docstring for what changes."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if getattr(model, "_visattn_shift_equivariant", False):
        raise ValueError("model was already converted by make_shift_equivariant")
    if isinstance(model, VisionTransformer):
        converted = _vit(model)
    elif isinstance(model, SwinTransformer):
        converted = _swin(model)
    else:
        raise TypeError(
            f"model must be a timm VisionTransformer or SwinTransformer, got {type(model).__name__}; for other "
            f"models use PolyphaseAnchor, ShiftEquivariantPatchEmbed and CircularPEG directly"
        )
    converted._visattn_shift_equivariant = True
    return converted
