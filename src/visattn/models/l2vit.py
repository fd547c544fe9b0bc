"""L2ViT T/S/B: local window attention and enhanced linear attention, alternating in every stage.

Paper: Zheng et al., "The Linear Attention Resurrection in Vision Transformer" (arXiv 2501.16182). Each stage
alternates two blocks (configurations and block order from the official repository ChuanyangZheng/L2ViT,
``classification/models/l2vit.py``, ``block_type="mix_local_enhanced_vit"``):

* even blocks, local window attention (LWA): ``x = CPE(x)``, ``x = x + WA(LN(x))`` with softmax attention inside
  non-overlapping 7 x 7 windows (no relative position bias, no shift; maps padded at the bottom and right with
  zeros after the norm, the padded tokens taking part as in the released code), ``x = CPE(x)``,
  ``x = x + MLP(LN(x))``;
* odd blocks, linear global attention (LGA): ``x = CPE(x)``, ``x = x + LA(LN(x))`` with the enhanced linear
  attention ``out_i = tau_h relu(q_i) (relu(K)^T V) / max(relu(q_i) . sum_j relu(k_j), 100)`` (visattn's
  ``l2vit_linear`` mixer), ``x = x + LCM(LN(x))`` with the local concentration module
  ``dw7(BN(GELU(dw7(.))))``, ``x = x + MLP(LN(x))``.

``CPE(x) = x + dwconv3x3(x)`` (conditional position encoding, timm's DaViT ``ConvPosEnc``). Stem: conv 3x3 s2 ->
BN -> ReLU -> conv 3x3 s2 -> BN -> LN (stride 4); between stages LN -> conv 2x2 s2. Head: LN, average pool,
linear. Widths/depths: T (96, 2-2-6-2), S (96, 2-2-18-2), B (128, 2-2-18-2), heads of 32 channels, MLP ratio 4.

Any image size runs (the stem and the downsampling pad to even sizes, the windows pad to multiples of 7, as the
released code). The official checkpoints (``L2ViT-{Tiny,Small,Base}-checkpoint-best-ema.pth`` on the repository's
v1.0 release) load through :func:`checkpoint_filter_fn` with ``pretrained=True,
pretrained_cfg_overlay=dict(file=path)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, Mlp
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.davit import ConvPosEnc
from torch import Tensor, nn

from .._checks import check_image_batch
from ..nn.attention import Attention
from ..nn.l2vit import LocalConcentrationModule
from ._init import trunc_normal_init
from ._pretrained import paper_cfg

__all__ = ["L2VIT_ARGS", "L2ViT", "checkpoint_filter_fn"]

L2VIT_ARGS: dict[str, dict[str, Any]] = {
    "visattn_l2vit_tiny": dict(dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "visattn_l2vit_small": dict(dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "visattn_l2vit_base": dict(dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
"""Sizes, as the official ``L2ViT_{Tiny,Small,Base}``."""


def _to_nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def _pad_to(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad an NCHW map at the bottom and right to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


class LocalWindowBlock(nn.Module):
    """L2ViT's local window attention block on NHWC maps (keys ``cpe.{0,1}.proj``, ``norm1``, ``attn.{qkv,proj}``,
    ``norm2``, ``mlp.{fc1,fc2}`` as the released ``LWABlock``)."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.cpe = nn.ModuleList([ConvPosEnc(dim, k=3), ConvPosEnc(dim, k=3)])
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, mixer="softmax", shape=(window_size, window_size))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _window_attention(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        s = self.window_size
        x = _to_nhwc(_pad_to(_to_nchw(x), s))
        hp, wp = x.shape[1:3]
        windows = x.reshape(b, hp // s, s, wp // s, s, c).transpose(2, 3).reshape(-1, s * s, c)
        out = self.attn(windows).reshape(b, hp // s, wp // s, s, s, c).transpose(2, 3).reshape(b, hp, wp, c)
        return out[:, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        x = _to_nhwc(self.cpe[0](_to_nchw(x)))
        x = x + self.drop_path(self._window_attention(self.norm1(x)))
        x = _to_nhwc(self.cpe[1](_to_nchw(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LinearGlobalBlock(nn.Module):
    """L2ViT's linear global attention block with the local concentration module, on NHWC maps (keys
    ``cpe.0.proj``, ``norm1``, ``attn.{qkv, mixer.temperature, proj}``, ``lcm.{norm, conv1, bn, conv2}``,
    ``norm2``, ``mlp.{fc1,fc2}``; the released ``LGABlock`` names ``attn.temperature``, ``norm3``, ``local_mp``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.cpe = nn.ModuleList([ConvPosEnc(dim, k=3)])
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, mixer="l2vit_linear")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.lcm = LocalConcentrationModule(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _lcm_branch(self, x: Tensor) -> Tensor:
        """``dw7(BN(GELU(dw7(LN(x)))))``: the module without its residual, so that drop path acts on it alone."""
        lcm = self.lcm
        return lcm.conv2(lcm.bn(lcm.act(lcm.conv1(lcm.norm(x)))))

    def forward(self, x: Tensor) -> Tensor:
        x = _to_nhwc(self.cpe[0](_to_nchw(x)))
        b, h, w, c = x.shape
        x = x + self.drop_path(self.attn(self.norm1(x).reshape(b, h * w, c), shape=(h, w)).reshape(b, h, w, c))
        x = x + self.drop_path(_to_nhwc(self._lcm_branch(_to_nchw(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stem(nn.Module):
    """Pad to a multiple of 4, conv 3x3 s2 -> BN -> ReLU -> conv 3x3 s2 -> BN, then LN over channels (NHWC out)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1), nn.BatchNorm2d(dim // 2), nn.ReLU(),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(_to_nhwc(self.proj(_pad_to(x, 4))))


class Downsample(nn.Module):
    """LN over the input channels, pad to even sizes, conv 2x2 stride 2 (NHWC in and out)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Conv2d(in_dim, out_dim, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return _to_nhwc(self.proj(_pad_to(_to_nchw(self.norm(x)), 2)))


class L2ViTStage(nn.Module):
    """Optional downsampling, then blocks alternating local window (even) and linear global (odd) attention."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: list[float], downsample: bool) -> None:
        super().__init__()
        self.downsample = Downsample(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            LocalWindowBlock(dim, num_heads, window_size, mlp_ratio, drop_path[j]) if j % 2 == 0 else
            LinearGlobalBlock(dim, num_heads, mlp_ratio, drop_path[j]) for j in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
        return x


class L2ViT(nn.Module):
    """L2ViT (Zheng et al., arXiv 2501.16182) with timm's model interface.

    Args:
        dims, depths, num_heads: per stage.
        window_size: local windows (7; the official 384 model uses 12).
        mlp_ratio, drop_rate (before the classifier), drop_path_rate (linear over all blocks).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 dims: tuple[int, ...] = (96, 192, 384, 768), depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if not (len(dims) == len(depths) == len(num_heads)) or not dims:
            raise ValueError(f"dims, depths and num_heads must give one value per stage, got dims={dims}, "
                             f"depths={depths}, num_heads={num_heads}")
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        self.stem = Stem(in_chans, dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, start, self.feature_info = [], 0, []
        for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads, strict=True)):
            stages.append(L2ViTStage(dims[max(i - 1, 0)], dim, depth, heads, window_size, mlp_ratio,
                                     rates[start:start + depth], downsample=i > 0))
            start += depth
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt="NHWC")
        self.apply(partial(trunc_normal_init, types=(nn.Conv2d, nn.Linear)))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's ``forward_intermediates``: the stage outputs as NCHW maps (``norm`` applies the final norm to the
        last one), and the ``forward_features`` output unless ``intermediates_only``."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        last = len(self.stages) - 1
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take_indices:
                intermediates.append(_to_nchw(self.norm(x) if norm and index == last else x))
        if intermediates_only:
            return intermediates
        return (self.norm(x) if index == last else x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the norm and head); return the indices kept."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head or max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head = ClassifierHead(self.num_features, 0, input_fmt="NHWC")
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` images -> the normalised last map, NHWC."""
        check_image_batch(x, self.in_chans)
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Map an official L2ViT checkpoint (``{"model": ...}``, ``{"model_ema": ...}`` or a bare state dict; the
    released ``*-best-ema.pth`` files) onto :class:`L2ViT`:

    ``downsample_layers.0.{proj.proj.*, norm.*}`` -> ``stem.{proj.*, norm.*}``; ``downsample_layers.{i}.*`` ->
    ``stages.{i}.downsample.*``; ``stages.{i}.{j}.*`` -> ``stages.{i}.blocks.{j}.*`` with, in the linear
    blocks, ``attn.temperature`` -> ``attn.mixer.temperature``, ``norm3.*`` -> ``lcm.norm.*`` and
    ``local_mp.*`` -> ``lcm.*``; ``head.*`` -> ``head.fc.*``. The load that follows is strict.
    """
    for key in ("model", "model_ema", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^downsample_layers\.0\.proj\.proj\.", "stem.proj.", key)
        key = re.sub(r"^downsample_layers\.0\.", "stem.", key)
        key = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", key)
        key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
        key = key.replace(".attn.temperature", ".attn.mixer.temperature")
        key = key.replace(".norm3.", ".lcm.norm.").replace(".local_mp.", ".lcm.")
        key = re.sub(r"^head\.", "head.fc.", key)
        out[key] = value
    return out


default_cfgs = generate_default_cfgs({f"{name}.in1k": paper_cfg(
    "2501.16182", pool_size=(7, 7), first_conv="stem.proj.0", classifier="head.fc", license="apache-2.0",
    origin_url="https://github.com/ChuanyangZheng/L2ViT/releases/tag/v1.0") for name in L2VIT_ARGS})


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> L2ViT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(L2ViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                                **dict(L2VIT_ARGS[variant], **kwargs))


@register_model
def visattn_l2vit_tiny(pretrained: bool = False, **kwargs: Any) -> L2ViT:
    """L2ViT-T (29 M parameters, 4.7 G FLOPs at 224 in the official README)."""
    return _create("visattn_l2vit_tiny", pretrained, kwargs)


@register_model
def visattn_l2vit_small(pretrained: bool = False, **kwargs: Any) -> L2ViT:
    """L2ViT-S (50 M, 9.0 G)."""
    return _create("visattn_l2vit_small", pretrained, kwargs)


@register_model
def visattn_l2vit_base(pretrained: bool = False, **kwargs: Any) -> L2ViT:
    """L2ViT-B (89 M, 15.9 G)."""
    return _create("visattn_l2vit_base", pretrained, kwargs)
