"""NAT and DiNAT: hierarchical neighborhood-attention backbones, ``visattn_nat_*`` and ``visattn_dinat_*``.

Papers: Hassani, Walton, Li, Li, Shi, "Neighborhood Attention Transformer" (NAT, arXiv 2204.07143) and Hassani,
Shi, "Dilated Neighborhood Attention Transformer" (DiNAT, arXiv 2209.15001). An overlapping tokenizer (two 3x3
stride-2 convolutions, then LayerNorm) gives a 1/4 map; four levels of pre-norm blocks

    ``x = x + gamma_1 * NA(LN(x))``,   ``x = x + gamma_2 * MLP(LN(x))``

(``NA``: 7x7 neighborhood attention with a relative position bias, :mod:`visattn.models.nat_attention`;
``gamma`` only where the model uses layer scale), each level but the last ending in a 3x3 stride-2 convolution
that doubles the channels, then LayerNorm; global average pooling and a linear classifier. DiNAT is NAT with a
dilation per block, alternating between 1 (local) and the largest dilation that the 224 px map allows (sparse
global): 8, 4, 2, 1 at the four levels.

Configurations are those of SHI-Labs' ``classification/nat.py`` and ``dinat.py``; parameter names are the official
repository's (``patch_embed``, ``levels.i.blocks.j.attn.{qkv,rpb,proj}``, ``gamma1``, ``head`` ...), so the released
checkpoints load unchanged, and Hugging Face transformers' ``NatForImageClassification`` /
``DinatForImageClassification`` checkpoints (and their headless ``NatModel`` / ``DinatModel``) are converted on
load by :func:`convert_hf_state_dict`; :func:`checkpoint_filter_fn` detects the layout. The key mapping (HF ->
official), with ``p`` = ``nat`` / ``dinat`` (absent in headless checkpoints):

============================================================  ============================================
``p.embeddings.patch_embeddings.projection.{0,1}.*``          ``patch_embed.proj.{0,1}.*``
``p.embeddings.norm.*``                                       ``patch_embed.norm.*``
``p.encoder.levels.i.layers.j.layernorm_before.*``            ``levels.i.blocks.j.norm1.*``
``....attention.self.{query,key,value}.*``                    ``levels.i.blocks.j.attn.qkv.*`` (concatenated q, k, v)
``....attention.self.rpb``                                    ``levels.i.blocks.j.attn.rpb``
``....attention.output.dense.*``                              ``levels.i.blocks.j.attn.proj.*``
``....layernorm_after.*``                                     ``levels.i.blocks.j.norm2.*``
``....intermediate.dense.*`` / ``....output.dense.*``         ``levels.i.blocks.j.mlp.fc1.*`` / ``mlp.fc2.*``
``....layer_scale_parameters`` ``(2, dim)``                   ``levels.i.blocks.j.gamma1``, ``gamma2`` (rows 0, 1)
``p.encoder.levels.i.downsample.{reduction,norm}.*``          ``levels.i.downsample.{reduction,norm}.*``
``p.layernorm.*`` / ``classifier.*``                          ``norm.*`` / ``head.*``
============================================================  ============================================

Image sizes: any. The convolutions round up (``ceil(H / 4)``, then ``ceil(. / 2)`` per level); a map smaller than
``kernel_size * dilation`` on a side is zero-padded at the bottom / right to that size inside the attention layer
(after ``norm1``, before ``qkv``) and cropped after it, as in the official code and transformers, so the padded
tokens are keys with ``qkv``'s bias as their projection. DiNAT's dilations were chosen for 224 px; at smaller
sizes its dilated layers pad more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, Mlp
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._head import ChannelsLastHead, check_global_pool
from ._init import trunc_normal_init
from ._intermediates import channels_last_intermediates
from ._pretrained import paper_cfg
from .nat_attention import NeighborhoodAttention2dRPB

__all__ = ["NAT", "NAT_ARGS", "checkpoint_filter_fn", "convert_hf_state_dict"]

_STANDARD = dict(depths=(3, 4, 18, 5), kernel_size=7)
_DILATIONS_224 = ((1, 8, 1), (1, 4, 1, 4), (1, 2) * 9, (1,) * 5)
NAT_ARGS: dict[str, dict[str, Any]] = {
    "nat_mini": dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0,
                     drop_path_rate=0.2, kernel_size=7),
    "nat_tiny": dict(_STANDARD, num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0, drop_path_rate=0.2),
    "nat_small": dict(_STANDARD, num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2.0, drop_path_rate=0.3,
                      layer_scale=1e-5),
    "nat_base": dict(_STANDARD, num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2.0, drop_path_rate=0.5,
                     layer_scale=1e-5),
    "dinat_mini": dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0,
                       drop_path_rate=0.2, kernel_size=7, dilations=((1, 8, 1), (1, 4, 1, 4), (1, 2) * 3, (1,) * 5)),
    "dinat_tiny": dict(_STANDARD, num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0, drop_path_rate=0.2,
                       dilations=_DILATIONS_224),
    "dinat_small": dict(_STANDARD, num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2.0, drop_path_rate=0.3,
                        dilations=_DILATIONS_224),
    "dinat_base": dict(_STANDARD, num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2.0, drop_path_rate=0.5,
                       layer_scale=1e-5, dilations=_DILATIONS_224),
    "dinat_large": dict(_STANDARD, num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2.0, drop_path_rate=0.35,
                        dilations=_DILATIONS_224),
    "dinat_large_384": dict(_STANDARD, num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2.0,
                            drop_path_rate=0.35, dilations=((1, 13, 1), (1, 6, 1, 6), (1, 3) * 9, (1,) * 5)),
}
"""Each model's arguments, as in SHI-Labs' ``classification/nat.py`` and ``dinat.py`` (``dinat_small`` has no layer
scale there, ``dinat_base`` has; ``dinat_large_384`` uses larger dilations for its 96 px first level)."""


class ConvTokenizer(nn.Module):
    """Two 3x3 stride-2 convolutions (``3 -> dim / 2 -> dim``), then LayerNorm: ``(B, 3, H, W) -> (B, H/4, W/4, C)``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_chans, embed_dim // 2, 3, stride=2, padding=1),
                                  nn.Conv2d(embed_dim // 2, embed_dim, 3, stride=2, padding=1))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """3x3 stride-2 convolution without bias doubling the channels, then LayerNorm, channels-last in and out."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATBlock(nn.Module):
    """``x + gamma_1 * NA(LN(x))``, then ``x + gamma_2 * MLP(LN(x))`` (``gamma`` only with ``layer_scale``)."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: float | None, drop: float, attn_drop: float, drop_path: float,
                 layer_scale: float | None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2dRPB(dim, num_heads, kernel_size=kernel_size, dilation=dilation,
                                               qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                                               proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.layer_scale = bool(layer_scale)
        if layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        attn = self.attn(self.norm1(x))
        if self.layer_scale:
            attn = self.gamma1 * attn
        x = x + self.drop_path(attn)
        mlp = self.mlp(self.norm2(x))
        if self.layer_scale:
            mlp = self.gamma2 * mlp
        return x + self.drop_path(mlp)


class NATLevel(nn.Module):
    """``depth`` blocks at one resolution, then (except at the last level) ``downsample(dim)``: ``(B, H, W, dim) ->
    (B, ceil(H / 2), ceil(W / 2), 2 dim)``."""

    def __init__(self, dim: int, depth: int, downsample: Callable[[int], nn.Module] | None,
                 dilations: Sequence[int], drop_path: Sequence[float], **block_args: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(NATBlock(dim, dilation=dilations[i], drop_path=drop_path[i], **block_args)
                                    for i in range(depth))
        self.downsample = downsample(dim) if downsample is not None else None
        self.grad_checkpointing = False

    def forward_blocks(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


def _check_args(depths: Sequence[int], num_heads: Sequence[int], dilations: Sequence[Sequence[int]] | None,
                embed_dim: int, kernel_size: int) -> None:
    if len(num_heads) != len(depths):
        raise ValueError(f"num_heads must have one entry per level ({len(depths)}), got {tuple(num_heads)}")
    for i, heads in enumerate(num_heads):
        if (embed_dim * 2 ** i) % heads:
            raise ValueError(f"num_heads[{i}]={heads} must divide the level's channels {embed_dim * 2 ** i}")
    if dilations is not None:
        if len(dilations) != len(depths) or any(len(d) != n for d, n in zip(dilations, depths, strict=True)):
            raise ValueError(f"dilations must give one dilation per block of every level (depths={tuple(depths)}), "
                             f"got {dilations}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")


class NAT(ChannelsLastHead):
    """NAT / DiNAT (see the module docstring), channels-last inside, timm's model interface outside.

    Args:
        embed_dim: channels of the first level (doubled at every level).
        depths: blocks per level.
        num_heads: attention heads per level.
        mlp_ratio: MLP hidden width over channels.
        kernel_size: neighborhood side (odd).
        dilations: one dilation per block per level (DiNAT), or None for 1 everywhere (NAT).
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier).
        global_pool: ``"avg"`` or ``""`` (no pooling: ``forward_head`` returns the map).
        qkv_bias, qk_scale: attention projections' bias and logit scale.
        drop_rate: dropout after the tokenizer, after the attention projection and in the MLP (as the official
            code's ``drop_rate``).
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, rising linearly over the blocks to this rate.
        layer_scale: initial value of the per-channel residual scales ``gamma1, gamma2``; None or 0 for none (as
            transformers' ``layer_scale_init_value``; timm's ``create_model`` drops None, so pass 0 there).
        stem_layer: ``stem_layer(in_chans, embed_dim)`` maps images to a ``(B, H/4, W/4, embed_dim)`` map
            (NAT's :class:`ConvTokenizer` by default).
        downsample_layer: ``downsample_layer(dim)`` halves the map and doubles the channels between levels
            (NAT's :class:`ConvDownsampler` by default).
    """

    def __init__(self, embed_dim: int = 64, depths: Sequence[int] = (3, 4, 18, 5),
                 num_heads: Sequence[int] = (2, 4, 8, 16), mlp_ratio: float = 3.0, kernel_size: int = 7,
                 dilations: Sequence[Sequence[int]] | None = None, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.2,
                 layer_scale: float | None = None, stem_layer: Callable[[int, int], nn.Module] = ConvTokenizer,
                 downsample_layer: Callable[[int], nn.Module] = ConvDownsampler) -> None:
        super().__init__()
        _check_args(depths, num_heads, dilations, embed_dim, kernel_size)
        self.num_classes = num_classes
        self.global_pool = check_global_pool(global_pool)
        self.num_levels = len(depths)
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (self.num_levels - 1)
        self.patch_embed = stem_layer(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.levels = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2 ** i
            self.levels.append(NATLevel(
                dim, depth, downsample_layer if i < self.num_levels - 1 else None,
                dilations[i] if dilations is not None else (1,) * depth,
                rates[sum(depths[:i]):sum(depths[:i + 1])], num_heads=num_heads[i], kernel_size=kernel_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                layer_scale=layer_scale))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"levels.{i}"))
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(partial(trunc_normal_init, reset_layer_norm=True))

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"rpb"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^patch_embed", blocks=r"^levels\.(\d+)" if coarse else [
            (r"^levels\.(\d+)\.blocks\.(\d+)", None), (r"^levels\.(\d+)\.downsample", (0,)), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for level in self.levels:
            level.grad_checkpointing = enable

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Each requested level's map before its downsampler, ``(B, C, H, W)``; the last one normed if ``norm``.

        Returns the intermediates, or ``(forward_features(x), intermediates)``.
        """
        return channels_last_intermediates(
            x, lambda t: self.pos_drop(self.patch_embed(t)), [level.forward_blocks for level in self.levels],
            self.norm, indices, norm, stop_early, output_fmt, intermediates_only,
            downsamples=[level.downsample for level in self.levels])

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the levels after the last requested one (and its downsampler), the norm and head if asked."""
        take, max_index = feature_take_indices(len(self.levels), indices)
        self.levels = self.levels[:max_index + 1]
        self.levels[-1].downsample = None
        self.prune_norm_and_head(prune_norm, prune_head)
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> the final normed map ``(B, H/32, W/32, num_features)``."""
        x = self.pos_drop(self.patch_embed(x))
        for level in self.levels:
            x = level(x)
        return self.norm(x)



def convert_hf_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``Nat*`` / ``Dinat*`` state dict -> the official layout (mapping in the module docstring)."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    rules = (("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
             ("embeddings.norm.", "patch_embed.norm."),
             ("encoder.levels.", "levels."), (".layers.", ".blocks."), ("layernorm_before.", "norm1."),
             ("attention.self.rpb", "attn.rpb"), ("attention.output.dense.", "attn.proj."),
             ("layernorm_after.", "norm2."), ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),
             ("classifier.", "head."))
    for key, value in state_dict.items():
        name = key
        for prefix in ("dinat.", "nat."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name.startswith("layernorm."):
            out["norm." + name[len("layernorm."):]] = value
            continue
        for old, new in rules:
            name = name.replace(old, new)
        if name.endswith("layer_scale_parameters"):
            base = name[: -len("layer_scale_parameters")]
            out[base + "gamma1"], out[base + "gamma2"] = value[0], value[1]
            continue
        for part in ("query", "key", "value"):
            marker = f".attention.self.{part}."
            if marker in name:
                base, suffix = name.split(marker)
                qkv.setdefault(f"{base}.attn.qkv.{suffix}", {})[part] = value
                break
        else:
            out[name] = value
    for name, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"checkpoint has {sorted(parts)} but not all of query, key, value for {name}")
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def _is_hf_layout(state_dict: Mapping[str, Tensor]) -> bool:
    return any(".attention.self." in key or key.startswith(("dinat.", "nat.", "embeddings.")) for key in state_dict)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """A NAT / DiNAT checkpoint in the official or the Hugging Face layout -> ``model``'s state dict.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}``, converts the HF layout (:func:`convert_hf_state_dict`),
    and raises a ``ValueError`` listing the missing and unexpected keys (and shape mismatches) against ``model``.
    """
    for wrapper in ("model", "state_dict", "model_ema"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
            break
    converted = convert_hf_state_dict(state_dict) if _is_hf_layout(state_dict) else dict(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(converted[k].shape)}, model {tuple(expected[k].shape)}"
                    for k in set(expected) & set(converted) if converted[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint does not match {type(model).__name__}: missing keys {missing}, unexpected keys "
                         f"{unexpected}, shape mismatches {shapes}")
    return converted


def load_checkpoint(model: NAT, state_dict: Mapping[str, Any]) -> None:
    """Load an official or Hugging Face NAT / DiNAT checkpoint into ``model`` (strict, see
    :func:`checkpoint_filter_fn`)."""
    model.load_state_dict(checkpoint_filter_fn(state_dict, model))


_NAT_PARAMETERS = frozenset(inspect.signature(NAT.__init__).parameters) - {"self"}
_BUILD_KWARGS = frozenset({"features_only", "out_indices", "feature_cfg", "pretrained_cfg", "pretrained_cfg_overlay",
                           "pretrained_strict", "cache_dir", "output_stride", "feature_cls"})


def _create(variant: str, pretrained: bool = False, *, args: Mapping[str, Any] | None = None,
            filter_fn: Callable[[Mapping[str, Any], nn.Module], dict[str, Tensor]] = checkpoint_filter_fn,
            **kwargs: Any) -> NAT:
    """Build ``variant`` with its ``args`` (``NAT_ARGS`` by default) updated by the user's ``kwargs``."""
    unknown = sorted(set(kwargs) - _NAT_PARAMETERS - _BUILD_KWARGS)
    if unknown:
        raise TypeError(f"{variant} got unexpected keyword arguments {unknown}; NAT takes {sorted(_NAT_PARAMETERS)}")
    args = dict(NAT_ARGS[variant.removeprefix("visattn_")] if args is None else args, **kwargs)
    out_indices = args.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(NAT, variant, pretrained, pretrained_filter_fn=filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **args)


_URL = "https://shi-labs.com/projects/"


NAT_ARXIV, DINAT_ARXIV = "2204.07143", "2209.15001"


def _cfg(arxiv: str, url: str, hf: str | None, **kwargs: Any) -> dict[str, Any]:
    """The SHI-Labs checkpoint at ``url`` (``hf``: the same weights on the Hugging Face hub, if any)."""
    notes = () if hf is None else (f"the same weights in the Hugging Face layout: {hf} (converted on load)",)
    fields = dict(pool_size=(7, 7), first_conv="patch_embed.proj.0", classifier="head", license="mit",
                  origin_url="https://github.com/SHI-Labs/Neighborhood-Attention-Transformer", notes=notes)
    return paper_cfg(arxiv, url=url, **{**fields, **kwargs})


default_cfgs = generate_default_cfgs({
    **{f"visattn_nat_{s}.in1k": _cfg(NAT_ARXIV, f"{_URL}nat/checkpoints/CLS/nat_{s}.pth", f"shi-labs/nat-{s}-in1k-224")
       for s in ("mini", "tiny", "small", "base")},
    **{f"visattn_dinat_{s}.in1k": _cfg(DINAT_ARXIV, f"{_URL}dinat/checkpoints/imagenet1k/dinat_{s}_in1k_224.pth",
                                       f"shi-labs/dinat-{s}-in1k-224") for s in ("mini", "tiny", "small", "base")},
    "visattn_dinat_large.in22k_ft_in1k": _cfg(
        DINAT_ARXIV, f"{_URL}dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_224.pth",
        "shi-labs/dinat-large-in22k-in1k-224"),
    "visattn_dinat_large_384.in22k_ft_in1k": _cfg(
        DINAT_ARXIV, f"{_URL}dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384.pth",
        "shi-labs/dinat-large-in22k-in1k-384", input_size=384, pool_size=(12, 12), crop_pct=1.0),
})


@register_model
def visattn_nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Mini (20M parameters in the paper)."""
    return _create("visattn_nat_mini", pretrained, **kwargs)


@register_model
def visattn_nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Tiny (28M)."""
    return _create("visattn_nat_tiny", pretrained, **kwargs)


@register_model
def visattn_nat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Small (51M)."""
    return _create("visattn_nat_small", pretrained, **kwargs)


@register_model
def visattn_nat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Base (90M)."""
    return _create("visattn_nat_base", pretrained, **kwargs)


@register_model
def visattn_dinat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Mini (20M)."""
    return _create("visattn_dinat_mini", pretrained, **kwargs)


@register_model
def visattn_dinat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Tiny (28M)."""
    return _create("visattn_dinat_tiny", pretrained, **kwargs)


@register_model
def visattn_dinat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Small (51M)."""
    return _create("visattn_dinat_small", pretrained, **kwargs)


@register_model
def visattn_dinat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Base (90M)."""
    return _create("visattn_dinat_base", pretrained, **kwargs)


@register_model
def visattn_dinat_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large (200M), ImageNet-22k pre-trained, fine-tuned on ImageNet-1k at 224."""
    return _create("visattn_dinat_large", pretrained, **kwargs)


@register_model
def visattn_dinat_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 384 (dilations 13, 6, 3, 1), ImageNet-22k pre-trained, fine-tuned on ImageNet-1k."""
    return _create("visattn_dinat_large_384", pretrained, **kwargs)
