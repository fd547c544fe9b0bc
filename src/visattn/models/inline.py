"""InLine-DeiT and InLine-Swin: the networks of InLine attention, on timm's ViT and Swin skeletons.

Paper: Han et al., "Bridging the Divide: Reconsidering Softmax and Linear Attention" (arXiv 2412.06590). InLine
attention (Eq. 5) replaces softmax by an injective linear attention whose rows sum to one, plus a dynamic 3 x 3
depthwise local residual on ``v`` (visattn's :class:`~visattn.nn.inline_attention.InLineMixer`):

    ``y_i = phi(q_i) (phi(K)^T V) s / N + (1 - s phi(q_i) . mean_j phi(k_j)) mean_j v_j + dwconv3x3_x(V)_i``,
    ``s = d^-1/2``, ``phi`` = identity.

Models (configurations from the official repository LeapLabTHU/InLine, ``models/inline_deit.py``,
``models/inline_swin.py`` and ``cfgs/*.yaml``):

* ``visattn_inline_deit_tiny``: timm's ``VisionTransformer`` (patch 16, 192 channels, depth 12, **6 heads** as
  released, qkv bias, class token) with every attention replaced by visattn's ``Attention(mixer="inline")``.
  ``N`` counts the class token; the local residual runs on the 14 x 14 grid tokens only.
* ``visattn_inline_swin_{tiny,small,base}``: timm's ``SwinTransformer`` (Swin-T/S/B widths and depths) with the
  attention of the InLine blocks replaced by :class:`InLineWindowAttention`. The official ``ATTN_TYPE`` string
  says which stages use InLine (``I``) and which keep Swin's softmax window attention with relative position
  bias (``S``); ``M<n>`` mixes (first ``n`` blocks InLine): T ``IIIS``, S ``IISS``, B ``IIMS2``. The official
  window 56 is clamped to the stage map, so every InLine block attends to its whole stage map (no shift); the
  softmax blocks use windows of ``max(7, 56 // 8) = 7`` shifted by 3 in odd blocks, as Swin.

Image sizes: InLine blocks see the whole map of the size the model is built for (``img_size``, default 224; at 384
the softmax window becomes 12 as the official 384 config). With ``dynamic_img_size=True`` other sizes run, the
InLine blocks then attend within windows of the built map size (padded as timm pads Swin's windows). Like the
official ``InLineAttention``, the InLine blocks do not use Swin's shift mask (they are never shifted at the built
size); the DeiT needs a square token grid (the official ``h = w = sqrt(n)``) unless ``dynamic_img_size``.

Checkpoints: the official ones (TsinghuaCloud links in the repository's README) load through
:func:`checkpoint_filter_fn` with ``pretrained=True, pretrained_cfg_overlay=dict(file=path)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import swin_transformer as timm_swin
from timm.models import vision_transformer as timm_vit
from torch import Tensor, nn

from ..nn.attention import Attention
from ._pretrained import paper_cfg
from .vit import vit_with_mixer

__all__ = ["DEIT_ARGS", "SWIN_ARGS", "InLineSwinTransformer", "InLineWindowAttention", "checkpoint_filter_fn",
           "parse_attn_types"]

DEIT_ARGS: dict[str, dict[str, Any]] = {
    "visattn_inline_deit_tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=6, qkv_bias=True),
}
"""InLine-DeiT sizes, as the official ``inline_deit_tiny`` (6 heads of 32 channels, not DeiT-T's 3 of 64)."""

SWIN_ARGS: dict[str, dict[str, Any]] = {
    "visattn_inline_swin_tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_types="IIIS"),
    "visattn_inline_swin_small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                                      attn_types="IISS"),
    "visattn_inline_swin_base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                     attn_types="IIMS2"),
}
"""InLine-Swin sizes and attention per stage, from the official ``cfgs/inline_swin_{t,s,b}.yaml``."""

_README = "https://github.com/LeapLabTHU/InLine#pretrained-models"


def parse_attn_types(attn_types: str, depths: Sequence[int]) -> list[list[str]]:
    """The attention of every block (``"I"`` InLine, ``"S"`` softmax window) from the official ``ATTN_TYPE``:
    one letter per stage, and after them the count ``n`` of leading InLine blocks of an ``"M"`` stage."""
    stages = len(depths)
    if not isinstance(attn_types, str) or len(attn_types) < stages or any(c not in "ISM" for c in attn_types[:stages]):
        raise ValueError(f"attn_types must give one of 'I', 'S', 'M' per stage ({stages} stages) as the official "
                         f"ATTN_TYPE (e.g. 'IIIS', 'IIMS2'), got {attn_types!r}")
    mixed = attn_types[stages:]
    if "M" in attn_types[:stages] and not mixed.isdigit():
        raise ValueError(f"attn_types with an 'M' stage must end with its count of InLine blocks (e.g. 'IIMS2'), "
                         f"got {attn_types!r}")
    if "M" not in attn_types[:stages] and mixed:
        raise ValueError(f"attn_types has {mixed!r} after its {stages} stage letters but no 'M' stage")
    return [[("I" if j < int(mixed) else "S") if kind == "M" else kind for j in range(depth)]
            for kind, depth in zip(attn_types[:stages], depths, strict=True)]


class InLineWindowAttention(Attention):
    """InLine attention on the (window) token grid of a timm Swin block: ``proj(InLine(qkv(x)))``.

    Takes timm's ``WindowAttention`` call ``(x_windows, mask=None)``; the grid is ``window_size``. The shift mask is
    not used (as the official ``InLineAttention``). Parameters: ``qkv``, ``mixer.residual``, ``proj``.
    """

    forward_calls_mixer = True
    """Its ``forward`` is :class:`~visattn.nn.Attention`'s (the mask dropped), so the lens can route the mixer."""

    def __init__(self, dim: int, num_heads: int, window_size: int | Sequence[int], qkv_bias: bool = True,
                 proj_drop: float = 0.0, kernel: str = "identity") -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop, mixer="inline",
                         shape=tuple(to_2tuple(window_size)), kernel=kernel)

    @classmethod
    def from_timm(cls, source: timm_swin.WindowAttention, kernel: str = "identity") -> InLineWindowAttention:
        """A module taking over ``source``'s ``qkv`` and ``proj`` (and their initialisation)."""
        new = cls(source.qkv.in_features, source.num_heads, source.window_size, source.qkv.bias is not None,
                  source.proj_drop.p, kernel).to(source.qkv.weight.device)
        new.qkv, new.proj = source.qkv, source.proj
        return new

    @property
    def window_size(self) -> tuple[int, ...]:
        return self.shape

    def set_window_size(self, window_size: int | Sequence[int]) -> None:
        """Attend over windows of ``window_size`` from now on (no parameter depends on it)."""
        self.shape = tuple(to_2tuple(window_size))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # noqa: ARG002  (timm's call)
        return super().forward(x)


class InLineSwinTransformer(timm_swin.SwinTransformer):
    """timm's ``SwinTransformer`` with InLine attention in the blocks ``attn_types`` names (official format).

    InLine blocks attend over their whole stage map at the built size (window = map, no shift); the others keep
    timm's shifted-window softmax attention with ``window_size``. Everything else is timm's.
    """

    def __init__(self, attn_types: str = "IIIS", inline_kernel: str = "identity", **kwargs: Any) -> None:
        depths = kwargs.get("depths", (2, 2, 6, 2))
        self.attn_types = parse_attn_types(attn_types, depths)
        super().__init__(**kwargs)
        for stage, kinds in zip(self.layers, self.attn_types, strict=True):
            for block, kind in zip(stage.blocks, kinds, strict=True):
                if kind == "I":
                    block.attn = InLineWindowAttention.from_timm(block.attn, inline_kernel)
        self._inline_windows()

    def _inline_windows(self) -> None:
        for stage, kinds in zip(self.layers, self.attn_types, strict=True):
            for block, kind in zip(stage.blocks, kinds, strict=True):
                if kind == "I":
                    block.set_input_size(block.input_resolution, tuple(block.input_resolution))

    def set_input_size(self, *args: Any, **kwargs: Any) -> None:
        """timm's ``set_input_size``, after which the InLine blocks again see their whole stage map."""
        super().set_input_size(*args, **kwargs)
        self._inline_windows()


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Map an official InLine checkpoint (``{"model": state_dict}`` or a bare state dict) onto the visattn model.

    Both families: ``*.attn.residual.{0,2}.*`` -> ``*.attn.mixer.residual.{0,2}.*`` (the local-residual kernel
    predictor lives in the mixer). DeiT: then timm's ViT filter (the official names are timm 0.4's:
    ``patch_embed.proj``, ``cls_token``, ``pos_embed`` resized to the model's grid, ``blocks.{i}.{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``). Swin: then timm's Swin filter (``layers.{i}.downsample``
    of the official end-of-stage merging -> ``layers.{i+1}.downsample``, ``head`` -> ``head.fc``, the buffers
    ``relative_position_index`` and ``attn_mask`` dropped). The load that follows is strict.
    """
    state_dict = state_dict.get("model", state_dict)
    state_dict = {re.sub(r"\.attn\.residual\.", ".attn.mixer.residual.", k): v for k, v in state_dict.items()}
    if isinstance(model, timm_swin.SwinTransformer):
        return timm_swin.checkpoint_filter_fn(state_dict, model)
    return timm_vit.checkpoint_filter_fn(state_dict, model)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return paper_cfg("2412.06590", crop_pct=0.9, first_conv="patch_embed.proj", license="mit", origin_url=_README,
                     **kwargs)


default_cfgs = generate_default_cfgs({
    "visattn_inline_deit_tiny.in1k": _cfg(classifier="head"),
    **{f"{name}.in1k": _cfg(classifier="head.fc", fixed_input_size=True) for name in SWIN_ARGS},
})


def _create_deit(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    kernel = kwargs.pop("inline_kernel", "identity")
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(vit_with_mixer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                                mixer="inline", mixer_kwargs=dict(kernel=kernel), **dict(DEIT_ARGS[variant], **kwargs))


def _create_swin(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> InLineSwinTransformer:
    args = dict(SWIN_ARGS[variant])
    img_size = kwargs.get("img_size", 224)
    side = img_size if isinstance(img_size, int) else max(img_size)
    args["window_size"] = max(7, side // 4 // 8)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(InLineSwinTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
                                **dict(args, **kwargs))


@register_model
def visattn_inline_deit_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """InLine-DeiT-T (6.5 M parameters, 1.1 G FLOPs at 224 in the paper): DeiT-T layout, 6 heads, InLine
    attention in every block."""
    return _create_deit("visattn_inline_deit_tiny", pretrained, kwargs)


@register_model
def visattn_inline_swin_tiny(pretrained: bool = False, **kwargs: Any) -> InLineSwinTransformer:
    """InLine-Swin-T (30 M, 4.5 G): InLine in stages 1-3, softmax window 7 in stage 4 ("IIIS")."""
    return _create_swin("visattn_inline_swin_tiny", pretrained, kwargs)


@register_model
def visattn_inline_swin_small(pretrained: bool = False, **kwargs: Any) -> InLineSwinTransformer:
    """InLine-Swin-S (50 M, 8.7 G): InLine in stages 1-2, softmax windows in stages 3-4 ("IISS")."""
    return _create_swin("visattn_inline_swin_small", pretrained, kwargs)


@register_model
def visattn_inline_swin_base(pretrained: bool = False, **kwargs: Any) -> InLineSwinTransformer:
    """InLine-Swin-B (88 M, 15.4 G): InLine in stages 1-2 and the first 2 blocks of stage 3 ("IIMS2")."""
    return _create_swin("visattn_inline_swin_base", pretrained, kwargs)
