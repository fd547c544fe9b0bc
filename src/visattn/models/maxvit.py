"""MaxViT T/S/B/L with its block and grid attention on visattn's :class:`~visattn.nn.partition.PartitionAttention`.

Paper: Tu et al., "MaxViT: Multi-Axis Vision Transformer" (arXiv 2204.01697). Each MaxViT block is MBConv ->
block attention + FFN -> grid attention + FFN (pre-LN, residual). Block attention attends inside ``P x P``
windows, grid attention inside a ``G x G`` grid of tokens spaced ``(H/G, W/G)`` apart, both with the relative
position bias ``T[head, dx + P - 1, dy + P - 1]``:

    ``out_q = sum_k softmax_k(q . k / sqrt(d) + T[head, x_k - x_q + P - 1, y_k - y_q + P - 1]) v_k``

The network is timm's ``MaxxVit`` built from timm's ``maxvit_{tiny,small,base,large}_tf`` configurations, with
each ``PartitionAttentionCl`` replaced by :class:`MaxVitPartitionBlock`, whose attention is visattn's
``PartitionAttention`` (fused SDPA on the partitions, the bias gathered once per call). Parameter names and
layouts are timm's, so timm's checkpoints (``timm/maxvit_*_tf_*`` on the Hugging Face hub) load unchanged:
:func:`checkpoint_filter_fn` is timm's filter (bias tables resized to another partition size, conv/linear
reshapes) plus a strict key check that lists missing and unexpected keys.

Image sizes: the partition size is ``img_size // 32`` (7 at 224, 12 at 384, 16 at 512). Any input whose
stage maps (``H / 4, H / 8, H / 16, H / 32``, rounded up) are multiples of the window and grid sizes runs, e.g.
448 on a model built for 224; others raise a ``ValueError`` naming the image size. Build with another
``img_size`` to change the partition size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import resize_rel_pos_bias_table, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import maxxvit as timm_maxxvit
from torch import Tensor, nn

from .._checks import check_image_batch
from ..nn.partition import PartitionAttention
from ._pretrained import counterpart_cfgs

__all__ = ["TIMM_COUNTERPARTS", "MaxVit", "MaxVitPartitionBlock", "checkpoint_filter_fn"]

SIZES = ("tiny", "small", "base", "large")
RESOLUTIONS = (224, 384, 512)


class MaxVitPartitionBlock(nn.Module):
    """Pre-norm transformer block around MaxViT block or grid attention, channels-last ``(B, H, W, C)``.

    ``x = x + drop_path(ls1(attn(norm1(x))))``, ``x = x + drop_path(ls2(mlp(norm2(x))))``; ``attn`` is a
    :class:`~visattn.nn.partition.PartitionAttention`. Built from a timm ``PartitionAttentionCl``: its norms,
    MLP, layer scales and drop paths are kept, and its attention parameters (``qkv``, ``proj`` and the bias
    table) move into the visattn module under the same names.
    """

    def __init__(self, source: timm_maxxvit.PartitionAttentionCl) -> None:
        super().__init__()
        old = source.attn
        if not isinstance(old.rel_pos, timm_maxxvit.RelPosBiasTf):
            raise ValueError(f"MaxVitPartitionBlock needs transformer_rel_pos_type='bias_tf' (the TensorFlow MaxViT "
                             f"bias), got a {type(old.rel_pos).__name__}")
        dim = old.qkv.in_features
        self.partition_type = "block" if source.partition_block else "grid"
        self.partition_size = tuple(source.partition_size)
        self.norm1 = source.norm1
        with torch.device(old.qkv.weight.device):
            self.attn = PartitionAttention(dim, self.partition_type, self.partition_size, dim_head=old.dim_head,
                                           qkv_bias=old.qkv.bias is not None, head_first=old.head_first,
                                           attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p)
        self.attn.qkv = old.qkv
        self.attn.proj = old.proj
        self.attn.rel_pos.relative_position_bias_table = old.rel_pos.relative_position_bias_table
        self.ls1, self.drop_path1 = source.ls1, source.drop_path1
        self.norm2, self.mlp = source.norm2, source.mlp
        self.ls2, self.drop_path2 = source.ls2, source.drop_path2

    def init_non_persistent_buffers(self) -> None:
        """Recompute the partition coordinates the bias is gathered with (after ``to_empty`` from the meta device;
        timm's ``reinit_non_persistent_buffers`` calls this)."""
        rel_pos = self.attn.rel_pos
        device = rel_pos.relative_position_bias_table.device
        rows, cols = (torch.arange(p, device=device) for p in rel_pos.partition_size)
        grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")
        rel_pos.coords = torch.stack([grid_rows.flatten(), grid_cols.flatten()], dim=-1)

    def set_partition_size(self, partition_size: int | tuple[int, int]) -> None:
        """Not supported: build the model with another ``img_size`` (the bias table is sized by the partition)."""
        raise NotImplementedError(
            f"changing the partition size of a built visattn MaxViT ({self.partition_size} -> {partition_size!r}) "
            "is not supported; create the model with the img_size you need (timm's checkpoint_filter_fn resizes "
            "the bias tables on load)")

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class MaxVit(timm_maxxvit.MaxxVit):
    """timm's ``MaxxVit`` with every ``PartitionAttentionCl`` replaced by :class:`MaxVitPartitionBlock`.

    Everything else (stem, MBConv, heads, ``forward_intermediates``, ``set_grad_checkpointing``,
    ``reset_classifier``, feature info) is timm's. ``kwargs`` are checked: names that are neither model
    arguments nor ``transformer_*`` / ``conv_*`` / top-level fields of timm's ``MaxxVitCfg`` raise a
    ``TypeError`` listing what is accepted.
    """

    def __init__(self, cfg: timm_maxxvit.MaxxVitCfg, img_size: int | tuple[int, int] = 224, **kwargs: Any) -> None:
        _check_kwargs(cfg, kwargs)
        super().__init__(cfg, img_size=img_size, **kwargs)
        if not all(isinstance(b, timm_maxxvit.MaxxVitBlock) for stage in self.stages for b in stage.blocks):
            raise ValueError(f"visattn MaxVit builds MaxViT ('M') blocks only, got "
                             f"block_type={kwargs.get('block_type', cfg.block_type)!r}")
        for block in self.modules():
            if isinstance(block, timm_maxxvit.MaxxVitBlock):
                if block.nchw_attn:
                    raise ValueError("visattn MaxVit runs channels-last partition attention; got "
                                     "transformer_use_nchw_attn=True")
                if block.attn_block is not None:
                    block.attn_block = MaxVitPartitionBlock(block.attn_block)
                block.attn_grid = MaxVitPartitionBlock(block.attn_grid)

    def stage_sizes(self, img_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map size of each stage for an input of ``img_size`` (stride 2 stem and stages, rounded up)."""
        size = tuple((s - 1) // st + 1 for s, st in zip(img_size, to_2tuple(self.stem.stride), strict=True))
        sizes = []
        for _ in self.stages:
            size = tuple((s - 1) // 2 + 1 for s in size)
            sizes.append(size)
        return sizes

    def check_img_size(self, img_size: tuple[int, int]) -> None:
        """Raise ``ValueError`` unless every stage map of ``img_size`` is a multiple of each partition size."""
        sizes = {block.partition_size for block in self.modules() if isinstance(block, MaxVitPartitionBlock)}
        for stage_size in self.stage_sizes(img_size):
            for part in sizes:
                if stage_size[0] % part[0] or stage_size[1] % part[1]:
                    need = tuple(p * self.feature_info[-1]["reduction"] for p in part)
                    raise ValueError(
                        f"img_size={tuple(img_size)} does not fit this MaxViT: its stage map {stage_size} is not a "
                        f"multiple of the partition size {part} (built for img_size={self.img_size}); use a "
                        f"multiple of {need}, or create the model with img_size={tuple(img_size)} "
                        f"(partition size img_size // {self.partition_ratio})")

    def _check_input(self, x: Tensor) -> None:
        check_image_batch(x)
        self.check_img_size((x.shape[-2], x.shape[-1]))

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return super().forward_features(x)

    def forward_intermediates(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        self._check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)

    def set_input_size(self, *args: Any, **kwargs: Any) -> None:
        """Not supported (see :meth:`MaxVitPartitionBlock.set_partition_size`)."""
        raise NotImplementedError("set_input_size is not supported on visattn MaxViT: create the model with the "
                                  "img_size you need")


def _check_kwargs(cfg: timm_maxxvit.MaxxVitCfg, kwargs: Mapping[str, Any]) -> None:
    base = set(cfg.__dataclass_fields__)
    transformer = {f"transformer_{n}" for n in cfg.transformer_cfg.__dataclass_fields__}
    conv = {f"conv_{n}" for n in cfg.conv_cfg.__dataclass_fields__}
    model_args = {"in_chans", "num_classes", "global_pool", "drop_rate", "drop_path_rate", "device", "dtype"}
    unknown = sorted(set(kwargs) - base - transformer - conv - model_args)
    if unknown:
        raise TypeError(f"unknown MaxViT argument(s) {unknown}; accepted: img_size, {sorted(model_args)}, fields of "
                        "timm's MaxxVitCfg, and transformer_* / conv_* fields of its transformer and conv configs")


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a timm MaxViT checkpoint (``timm/maxvit_*_tf_*``) onto :class:`MaxVit`.

    The key mapping is the identity: visattn keeps timm's names (``stages.{i}.blocks.{j}.attn_{block,grid}.
    attn.{qkv,proj,rel_pos.relative_position_bias_table}``, norms, MLP, MBConv, head). As timm's own filter does,
    bias tables of another partition size are resized (``timm.layers.resize_rel_pos_bias_table``) and conv / linear
    weights of equal size reshaped; timm's non-persistent lookup buffers are dropped. The load is strict: keys
    that still do not match fail with PyTorch's error listing the missing and unexpected keys.
    """
    state_dict = dict(state_dict)
    state_dict = state_dict.get("state_dict", state_dict.get("model", state_dict))
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("height_lookup", "width_lookup")):
            continue
        target = own.get(key)
        if target is not None and key.endswith(_TABLE) and value.shape != target.shape:
            rel_pos = model.get_submodule(key[:-len(_TABLE)])
            value = resize_rel_pos_bias_table(value, new_window_size=rel_pos.partition_size,
                                              new_bias_shape=target.shape)
        elif target is not None and value.ndim != target.ndim and value.numel() == target.numel():
            value = value.reshape(target.shape)
        out[key] = value
    return out


_TABLE = ".relative_position_bias_table"


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> MaxVit:
    size_name = variant.removeprefix("visattn_").rsplit("_", 1)[0]
    cfg = timm_maxxvit.model_cfgs[size_name]
    kwargs.setdefault("img_size", int(variant.rsplit("_", 1)[1]))
    return build_model_with_cfg(MaxVit, variant, pretrained, model_cfg=cfg,
                                feature_cfg=dict(flatten_sequential=True),
                                pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


TIMM_COUNTERPARTS: dict[str, str] = {
    f"visattn_maxvit_{size}_tf_{res}": f"maxvit_{size}_tf_{res}" for size in SIZES for res in RESOLUTIONS
}
"""visattn model name -> the timm model with the same architecture and weights."""

default_cfgs = generate_default_cfgs(counterpart_cfgs(TIMM_COUNTERPARTS, url=""))


@register_model
def visattn_maxvit_tiny_tf_224(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-T at 224 (timm ``maxvit_tiny_tf_224``) on visattn's partition attention."""
    return _create("visattn_maxvit_tiny_tf_224", pretrained, **kwargs)


@register_model
def visattn_maxvit_tiny_tf_384(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-T at 384 (timm ``maxvit_tiny_tf_384``) on visattn's partition attention."""
    return _create("visattn_maxvit_tiny_tf_384", pretrained, **kwargs)


@register_model
def visattn_maxvit_tiny_tf_512(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-T at 512 (timm ``maxvit_tiny_tf_512``) on visattn's partition attention."""
    return _create("visattn_maxvit_tiny_tf_512", pretrained, **kwargs)


@register_model
def visattn_maxvit_small_tf_224(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-S at 224 (timm ``maxvit_small_tf_224``) on visattn's partition attention."""
    return _create("visattn_maxvit_small_tf_224", pretrained, **kwargs)


@register_model
def visattn_maxvit_small_tf_384(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-S at 384 (timm ``maxvit_small_tf_384``) on visattn's partition attention."""
    return _create("visattn_maxvit_small_tf_384", pretrained, **kwargs)


@register_model
def visattn_maxvit_small_tf_512(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-S at 512 (timm ``maxvit_small_tf_512``) on visattn's partition attention."""
    return _create("visattn_maxvit_small_tf_512", pretrained, **kwargs)


@register_model
def visattn_maxvit_base_tf_224(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-B at 224 (timm ``maxvit_base_tf_224``) on visattn's partition attention."""
    return _create("visattn_maxvit_base_tf_224", pretrained, **kwargs)


@register_model
def visattn_maxvit_base_tf_384(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-B at 384 (timm ``maxvit_base_tf_384``) on visattn's partition attention."""
    return _create("visattn_maxvit_base_tf_384", pretrained, **kwargs)


@register_model
def visattn_maxvit_base_tf_512(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-B at 512 (timm ``maxvit_base_tf_512``) on visattn's partition attention."""
    return _create("visattn_maxvit_base_tf_512", pretrained, **kwargs)


@register_model
def visattn_maxvit_large_tf_224(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-L at 224 (timm ``maxvit_large_tf_224``) on visattn's partition attention."""
    return _create("visattn_maxvit_large_tf_224", pretrained, **kwargs)


@register_model
def visattn_maxvit_large_tf_384(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-L at 384 (timm ``maxvit_large_tf_384``) on visattn's partition attention."""
    return _create("visattn_maxvit_large_tf_384", pretrained, **kwargs)


@register_model
def visattn_maxvit_large_tf_512(pretrained: bool = False, **kwargs: Any) -> MaxVit:
    """MaxViT-L at 512 (timm ``maxvit_large_tf_512``) on visattn's partition attention."""
    return _create("visattn_maxvit_large_tf_512", pretrained, **kwargs)
