"""FasterNet T0/T1/T2/S/M/L on visattn's partial convolution blocks.

Paper: Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks" (arXiv 2303.03667). A
stem (4 x 4 stride-4 convolution + BN), four stages (a 2 x 2 stride-2 convolution + BN between them, doubling the
width) of FasterNet blocks, and a head (global average pool, 1 x 1 convolution to 1280 features, activation,
linear classifier). With ``c_p = c / n_div`` (``n_div = 4``) each block is

    ``PConv(x) = concat(Conv3x3(x[:, :c_p]), x[:, c_p:])``,
    ``x + DropPath(PW_{2c -> c}(act(BN(PW_{c -> 2c}(PConv(x))))))``.

The network is timm's :class:`~timm.models.fasternet.FasterNet` (stem, stages, head, ``feature_info``,
``forward_intermediates``, grad checkpointing, ``reset_classifier``) with every ``MLPBlock`` replaced by visattn's
:class:`~visattn.nn.feature_maps.FasterNetBlock` (its spatial mixing visattn's
:class:`~visattn.nn.feature_maps.PartialConv2d`); the parameters are moved, not copied, and keep timm's names.

Checkpoints: timm's layout (``patch_embed.*``, ``stages.{i}.downsample.{reduction,norm}``,
``stages.{i}.blocks.{j}.{spatial_mixing.partial_conv3, mlp.0, mlp.1, mlp.3}``, ``conv_head``, ``classifier``) loads
unchanged, so timm's ``fasternet_*.in1k`` weights do. The official repository's (JierunChen/FasterNet) flat layout
is renamed by :func:`official_to_timm_layout` (called by :func:`checkpoint_filter_fn`)::

    stages.{2i}.*          -> stages.{i}.*                 (the blocks of stage i)
    stages.{2i-1}.*        -> stages.{i}.downsample.*      (PatchMerging before stage i)
    avgpool_pre_head.1.*   -> conv_head.*
    head.*                 -> classifier.*

with a leading ``model.`` (PyTorch Lightning's wrapper) removed. The load is strict: keys that do not match raise
PyTorch's error listing the missing and unexpected keys.

Layer scale (``layer_scale_init_value > 0``) is refused: no released FasterNet uses it and visattn's block has none.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import fasternet as timm_fasternet
from torch import Tensor, nn

from ..nn.feature_maps import FasterNetBlock
from ._pretrained import counterpart_cfgs

__all__ = ["FASTERNET_ARGS", "TIMM_COUNTERPARTS", "FasterNet", "checkpoint_filter_fn", "official_to_timm_layout"]

FASTERNET_ARGS: dict[str, dict[str, Any]] = {
    "visattn_fasternet_t0": dict(embed_dim=40, depths=(1, 2, 8, 2), drop_path_rate=0.0, act_layer=nn.GELU),
    "visattn_fasternet_t1": dict(embed_dim=64, depths=(1, 2, 8, 2), drop_path_rate=0.02, act_layer=nn.GELU),
    "visattn_fasternet_t2": dict(embed_dim=96, depths=(1, 2, 8, 2), drop_path_rate=0.05),
    "visattn_fasternet_s": dict(embed_dim=128, depths=(1, 2, 13, 2), drop_path_rate=0.1),
    "visattn_fasternet_m": dict(embed_dim=144, depths=(3, 4, 18, 3), drop_path_rate=0.2),
    "visattn_fasternet_l": dict(embed_dim=192, depths=(3, 4, 18, 3), drop_path_rate=0.3),
}
"""The architecture of each size, as timm's ``fasternet_{t0,t1,t2,s,m,l}`` and the official configs (ReLU where no
activation is named)."""

TIMM_COUNTERPARTS: dict[str, str] = {name: name.removeprefix("visattn_") for name in FASTERNET_ARGS}
"""visattn model name -> the timm model with the same architecture and weights."""

_MODEL_ARGS = frozenset(inspect.signature(timm_fasternet.FasterNet.__init__).parameters) - {"self"}


def _block(source: timm_fasternet.MLPBlock, n_div: int, forward_type: str) -> FasterNetBlock:
    """visattn's FasterNet block holding ``source``'s partial convolution, MLP and DropPath."""
    conv = source.spatial_mixing.partial_conv3
    channels = source.mlp[0].in_channels
    block = FasterNetBlock(channels, n_div, forward_type=forward_type, device="meta")
    block.spatial_mixing.partial_conv3 = conv
    block.mlp, block.drop_path = source.mlp, source.drop_path
    return block


class FasterNet(timm_fasternet.FasterNet):
    """timm's ``FasterNet`` with visattn's :class:`~visattn.nn.feature_maps.FasterNetBlock` (see the module
    docstring).

    Arguments are timm's ``FasterNet`` arguments; unknown names raise a ``TypeError`` listing the accepted ones;
    ``layer_scale_init_value > 0`` and a width not divisible by ``n_div`` raise a ``ValueError``.
    """

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _MODEL_ARGS)
        if unknown:
            raise TypeError(f"unknown FasterNet argument(s) {unknown}; accepted: {sorted(_MODEL_ARGS)}")
        if kwargs.get("layer_scale_init_value", 0.0) > 0:
            raise ValueError(f"layer_scale_init_value must be 0 (visattn's FasterNetBlock has no layer scale), got "
                             f"{kwargs['layer_scale_init_value']!r}")
        n_div = kwargs.get("n_div", 4)
        embed_dim = kwargs.get("embed_dim", 96)
        if isinstance(n_div, bool) or not isinstance(n_div, int) or n_div < 1 or embed_dim % n_div:
            raise ValueError(f"n_div must be a positive int dividing embed_dim={embed_dim}, got {n_div!r}")
        super().__init__(**kwargs)
        forward_type = kwargs.get("pconv_fw_type", "split_cat")
        for stage in self.stages:
            for index, block in enumerate(stage.blocks):
                stage.blocks[index] = _block(block, n_div, forward_type)


_OFFICIAL_STAGE = re.compile(r"^stages\.(\d+)\.")


def official_to_timm_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a state dict in the FasterNet/PartialNet official flat layout to timm's (see the module docstring);
    a state dict already in timm's layout (it has ``conv_head.weight``) is returned unchanged."""
    state = dict(state_dict)
    if state and all(key.startswith("model.") for key in state):
        state = {key.removeprefix("model."): value for key, value in state.items()}
    if "conv_head.weight" in state:
        return state
    out = {}
    for key, value in state.items():
        match = _OFFICIAL_STAGE.match(key)
        if match:
            index = int(match.group(1))
            rest = key[match.end():]
            key = f"stages.{index // 2}.{rest}" if index % 2 == 0 else f"stages.{(index + 1) // 2}.downsample.{rest}"
        elif key.startswith("avgpool_pre_head.1."):
            key = "conv_head." + key.removeprefix("avgpool_pre_head.1.")
        elif key.startswith("head."):
            key = "classifier." + key.removeprefix("head.")
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a FasterNet checkpoint onto :class:`FasterNet`: timm's layout unchanged, the official one renamed by
    :func:`official_to_timm_layout`. Strict load afterwards."""
    return official_to_timm_layout(state_dict)


default_cfgs = generate_default_cfgs(counterpart_cfgs(TIMM_COUNTERPARTS, url=""))


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> FasterNet:
    depths = kwargs.get("depths", FASTERNET_ARGS[variant]["depths"])
    out_indices = kwargs.pop("out_indices", tuple(range(len(depths))))
    return build_model_with_cfg(
        FasterNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **dict(FASTERNET_ARGS[variant], **kwargs),
    )


@register_model
def visattn_fasternet_t0(pretrained: bool = False, **kwargs: Any) -> FasterNet:
    """FasterNet-T0 (3.9 M parameters, 0.34 G FLOPs; timm ``fasternet_t0``) on visattn's blocks."""
    return _create("visattn_fasternet_t0", pretrained, kwargs)


@register_model
def visattn_fasternet_t1(pretrained: bool = False, **kwargs: Any) -> FasterNet:
    """FasterNet-T1 (7.6 M parameters, 0.85 G FLOPs; timm ``fasternet_t1``) on visattn's blocks."""
    return _create("visattn_fasternet_t1", pretrained, kwargs)


@register_model
def visattn_fasternet_t2(pretrained: bool = False, **kwargs: Any) -> FasterNet:
    """FasterNet-T2 (15.0 M parameters, 1.90 G FLOPs; timm ``fasternet_t2``) on visattn's blocks."""
    return _create("visattn_fasternet_t2", pretrained, kwargs)


@register_model
def visattn_fasternet_s(pretrained: bool = False, **kwargs: Any) -> FasterNet:
    """FasterNet-S (31.1 M parameters, 4.55 G FLOPs; timm ``fasternet_s``) on visattn's blocks."""
    return _create("visattn_fasternet_s", pretrained, kwargs)


@register_model
def visattn_fasternet_m(pretrained: bool = False, **kwargs: Any) -> FasterNet:
    """FasterNet-M (53.5 M parameters, 8.72 G FLOPs; timm ``fasternet_m``) on visattn's blocks."""
    return _create("visattn_fasternet_m", pretrained, kwargs)


@register_model
def visattn_fasternet_l(pretrained: bool = False, **kwargs: Any) -> FasterNet:
    """FasterNet-L (93.4 M parameters, 15.49 G FLOPs; timm ``fasternet_l``) on visattn's blocks."""
    return _create("visattn_fasternet_l", pretrained, kwargs)
