"""Shift-equivariant ViT and Swin with adaptive polyphase anchoring: ``visattn_polyvit_*`` and ``visattn_polyswin_*``.

Paper: Ding, Soselia, Armstrong, Su and Huang, "Reviving Shift Equivariance in Vision Transformers"
(arXiv 2306.07470; official code willding123/Shift-Equivariant-Vision-Transformers: ``PolyViT``, ``PolySwin``).
Before every stride-``p`` step the map is rolled so that its polyphase component of largest l2 norm sits at phase
``(0, 0)`` (:func:`~visattn.transforms.polyphase.polyphase_anchor`)::

    (i*, j*) = argmax_{i, j < p} || x[:, :, i::p, j::p] ||_2,     x <- roll(x, (-i*, -j*)),

so a circular shift of the image moves the token grid by whole tokens. Here:

- patch embedding (``p`` = patch size): :class:`AnchoredPatchEmbed`, timm's ``PatchEmbed`` on the anchored image;
- ViT: the absolute position embedding (which pins tokens to places) is replaced by a depthwise 3 x 3 convolution
  with circular padding on the patch-token grid (:class:`~visattn.transforms.polyphase_layers.CircularPEG`),
  applied where the position embedding was added (the official ``PolyViT._pos_embed``); attention is permutation
  equivariant and the class token / average pool permutation invariant, so the logits are invariant;
- Swin: the window partition is anchored with ``p`` = window (:class:`AnchoredSwinBlock`: each block runs on its
  input anchored and rolls its output back) and the shifted-window mask is dropped, because on a circular map the
  wrapped windows are genuine neighbours; the token pooling of patch merging is anchored with ``p = 2``
  (:class:`AnchoredPatchMerging`). Relative position bias lives inside windows and is kept.

The logits are then exactly invariant to circular shifts of the input (up to round-off), which
:func:`shift_consistency` measures as the paper does: the fraction of images whose top-1 prediction agrees under two
random circular shifts. Image sides must be divisible by the patch size, and every stage's side by its window and by
2 before each merging (no padding: the anchoring pads nothing).

Sizes are those of the official configurations: ViT-Ti/S/B with 16 x 16 patches at 224 (``PolyViT`` around timm's
``vit_{tiny,small,base}_patch16_224``) and Swin-T (patch 4, window 7, 224). No weights were released;
``pretrained=True`` starts from timm's weights of the plain model (its position embedding dropped, the PEG new),
the official fine-tuning starting point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import swin_transformer as timm_swin
from timm.models import vision_transformer as timm_vit
from torch import Tensor, nn

from ..transforms.polyphase import polyphase_anchor, polyphase_unanchor
from ..transforms.polyphase_layers import CircularPEG
from ._pretrained import timm_pretrained_cfg

__all__ = [
    "PLAIN_COUNTERPARTS",
    "AnchoredPatchEmbed",
    "AnchoredPatchMerging",
    "AnchoredSwinBlock",
    "PolySwinTransformer",
    "PolyVisionTransformer",
    "circular_shift",
    "shift_consistency",
]

PLAIN_COUNTERPARTS: dict[str, str] = {
    "visattn_polyvit_tiny_patch16_224": "vit_tiny_patch16_224",
    "visattn_polyvit_small_patch16_224": "vit_small_patch16_224",
    "visattn_polyvit_base_patch16_224": "vit_base_patch16_224",
    "visattn_polyswin_tiny_patch4_window7_224": "swin_tiny_patch4_window7_224",
}
"""visattn model name -> the plain timm model it makes shift-equivariant (same sizes; not the same weights: the
ViTs drop the position embedding and gain a PEG)."""

VIT_ARGS: dict[str, dict[str, int]] = {
    "visattn_polyvit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "visattn_polyvit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "visattn_polyvit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}
SWIN_ARGS: dict[str, dict[str, Any]] = {
    "visattn_polyswin_tiny_patch4_window7_224": dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2),
                                                     num_heads=(3, 6, 12, 24)),
}


def circular_shift(x: Tensor, shift: Tensor) -> Tensor:
    """Circularly shift each image of ``x`` ``(B, C, H, W)`` by its own ``shift`` ``(B, 2)`` (rows, columns):
    ``out[b, :, i, j] = x[b, :, (i - s_b0) mod H, (j - s_b1) mod W]``."""
    return polyphase_unanchor(x, shift)


class AnchoredPatchEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` on the image rolled to its polyphase anchor (``p`` = patch size, arXiv 2306.07470):
    the token grid moves by whole tokens under any circular shift of the input."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(polyphase_anchor(x, tuple(self.patch_size))[0])


class PolyVisionTransformer(timm_vit.VisionTransformer):
    """timm's ``VisionTransformer`` with an anchored patch embedding and a circular PEG instead of the absolute
    position embedding (``PolyViT`` of arXiv 2306.07470). Every other argument is timm's."""

    def __init__(self, **kwargs: Any) -> None:
        for name in ("embed_layer", "pos_embed"):
            if name in kwargs:
                raise TypeError(f"{name} is fixed by PolyVisionTransformer (anchored patch embedding, no absolute "
                                f"position embedding), got {name}={kwargs[name]!r}")
        if kwargs.get("dynamic_img_pad"):
            raise ValueError("dynamic_img_pad=True pads the image after anchoring and breaks shift equivariance")
        super().__init__(embed_layer=AnchoredPatchEmbed, pos_embed="none", **kwargs)
        weight = self.patch_embed.proj.weight
        self.pos_conv = CircularPEG(self.embed_dim).to(device=weight.device, dtype=weight.dtype)

    def _pos_embed(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            grid = x.permute(0, 3, 1, 2)
        else:
            height, width = self.patch_embed.grid_size
            if x.shape[1] != height * width:
                raise ValueError(f"{x.shape[1]} patch tokens do not fill the {height} x {width} grid this model was "
                                 "built for; create it with dynamic_img_size=True to run other sizes")
            grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)
        tokens = self.pos_conv(grid).flatten(2).transpose(1, 2)
        return super()._pos_embed(tokens)


class AnchoredSwinBlock(timm_swin.SwinTransformerBlock):
    """timm's Swin block on its input anchored with ``p`` = window, output rolled back; no shifted-window mask (on a
    circular map the wrapped windows are neighbours). Exactly equivariant to circular shifts of its input."""

    def get_attn_mask(self, x: Tensor | None = None, device: torch.device | None = None,
                      dtype: torch.dtype | None = None) -> None:
        return None

    def forward(self, x: Tensor) -> Tensor:
        anchored, shift = polyphase_anchor(x, tuple(self.window_size), channels_last=True)
        return polyphase_unanchor(super().forward(anchored), shift, channels_last=True)


class AnchoredPatchMerging(timm_swin.PatchMerging):
    """timm's 2 x 2 patch merging on its input anchored with ``p = 2`` (token pooling, arXiv 2306.07470)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(polyphase_anchor(x, 2, channels_last=True)[0])


class PolySwinTransformer(timm_swin.SwinTransformer):
    """timm's ``SwinTransformer`` with an anchored patch embedding, anchored window partition (no shifted-window
    mask) and anchored patch merging (``PolySwin`` of arXiv 2306.07470). Every other argument is timm's; parameter
    names are timm's, so timm's Swin checkpoints load unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        if "embed_layer" in kwargs:
            raise TypeError(f"embed_layer is fixed by PolySwinTransformer, got embed_layer={kwargs['embed_layer']!r}")
        super().__init__(embed_layer=AnchoredPatchEmbed, **kwargs)
        for module in self.modules():
            # The anchored classes add behaviour only (no state): the modules timm built become them in place.
            if type(module) is timm_swin.SwinTransformerBlock:
                module.__class__ = AnchoredSwinBlock
                module.init_non_persistent_buffers()
            elif type(module) is timm_swin.PatchMerging:
                module.__class__ = AnchoredPatchMerging



def vit_checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: PolyVisionTransformer) -> dict[str, Tensor]:
    """A plain timm ViT checkpoint for :class:`PolyVisionTransformer`: timm's filter, then the absolute position
    embedding dropped and the model's own (fresh) PEG added."""
    state_dict = timm_vit.checkpoint_filter_fn(dict(state_dict), model)
    state_dict.pop("pos_embed", None)
    for key, value in model.state_dict().items():
        if key.startswith("pos_conv.") and key not in state_dict:
            state_dict[key] = value
    return state_dict


def _notes(name: str) -> tuple[str, ...]:
    return (f"no weights released with arXiv 2306.07470; pretrained=True loads timm's {PLAIN_COUNTERPARTS[name]} "
            "(fine-tuning start)",)


default_cfgs = generate_default_cfgs({
    name: timm_pretrained_cfg(timm_name, url="", notes=_notes(name)) for name, timm_name in PLAIN_COUNTERPARTS.items()
})


def _create_vit(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> PolyVisionTransformer:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(PolyVisionTransformer, variant, pretrained,
                                pretrained_filter_fn=vit_checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                                **dict(VIT_ARGS[variant], **kwargs))


def _create_swin(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> PolySwinTransformer:
    args = dict(SWIN_ARGS[variant], **kwargs)
    out_indices = args.pop("out_indices", tuple(range(len(args["depths"]))))
    return build_model_with_cfg(PolySwinTransformer, variant, pretrained,
                                pretrained_filter_fn=timm_swin.checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **args)


@register_model
def visattn_polyvit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> PolyVisionTransformer:
    """Shift-equivariant ViT-Ti/16 (arXiv 2306.07470): anchored patch embedding, circular PEG."""
    return _create_vit("visattn_polyvit_tiny_patch16_224", pretrained, kwargs)


@register_model
def visattn_polyvit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> PolyVisionTransformer:
    """Shift-equivariant ViT-S/16 (arXiv 2306.07470): anchored patch embedding, circular PEG."""
    return _create_vit("visattn_polyvit_small_patch16_224", pretrained, kwargs)


@register_model
def visattn_polyvit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> PolyVisionTransformer:
    """Shift-equivariant ViT-B/16 (arXiv 2306.07470): anchored patch embedding, circular PEG."""
    return _create_vit("visattn_polyvit_base_patch16_224", pretrained, kwargs)


@register_model
def visattn_polyswin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> PolySwinTransformer:
    """Shift-equivariant Swin-T (arXiv 2306.07470): anchored patch embedding, window partition and patch merging."""
    return _create_swin("visattn_polyswin_tiny_patch4_window7_224", pretrained, kwargs)


def shift_consistency(model: nn.Module, images: Tensor, trials: int = 1, max_shift: int | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
    """Consistency (arXiv 2306.07470): the fraction of images whose top-1 prediction is the same under two random
    circular shifts, averaged over ``trials`` draws; a 0-d tensor (no host sync).

    Each image gets two independent shifts ``(dy, dx)`` uniform in ``[0, max_shift]`` per axis (default: the whole
    side, ``H - 1`` and ``W - 1``). ``model`` runs in eval mode without gradients (its mode is restored).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}")
    height, width = images.shape[-2:]
    if max_shift is not None and (isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0):
        raise ValueError(f"max_shift must be an int >= 0 or None, got {max_shift!r}")
    limits = torch.tensor([height - 1, width - 1]) if max_shift is None else torch.tensor([max_shift, max_shift])
    training = model.training
    model.eval()
    agree = []
    try:
        with torch.no_grad():
            for _ in range(trials):
                draws = (torch.rand(2, images.shape[0], 2, generator=generator) * (limits + 1)).floor().long()
                draws = draws.to(images.device)
                first = model(circular_shift(images, draws[0])).argmax(dim=-1)
                second = model(circular_shift(images, draws[1])).argmax(dim=-1)
                agree.append((first == second).float().mean())
    finally:
        model.train(training)
    return torch.stack(agree).mean()
