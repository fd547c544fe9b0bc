"""HaloNets on visattn's halo attention: timm's ``halonet26t``, ``sehalonet33ts``, ``halonet50ts`` and the paper's
H0-H7 family.

Paper: Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones" (arXiv
2103.12731). Queries come from non-overlapping ``b x b`` blocks, keys and values from the ``(b + 2h)^2`` window
around each block (zero padding at the image border, kept in the softmax), with relative logits factorised into
height and width tables:

    ``out_q = sum_{k in window} softmax_k(q . k / sqrt(d) + q . R_h[x_k - x_q] + q . R_w[y_k - y_q]) v_k``

The networks are timm's :class:`~timm.models.byobnet.ByobNet` (ResNet-style bottleneck blocks whose 3 x 3
convolution is replaced by halo attention, stem, heads, ``feature_info``, ``forward_intermediates``, grad
checkpointing, ``reset_classifier``) built from timm's configurations with every halo layer made by visattn's
:class:`~visattn.nn.halo.HaloAttention` instead of timm's ``HaloAttn``.

Checkpoints: the key mapping is the identity (``stages.{i}.{j}.self_attn.{q.weight, kv.weight,
pos_embed.height_rel, pos_embed.width_rel}`` and timm's names for every other layer), so timm's
``halonet26t.a1h_in1k``, ``sehalonet33ts.ra2_in1k`` and ``halonet50ts.a1h_in1k`` weights load unchanged through
timm's ByobNet filter; the load is strict and keys that do not match raise PyTorch's error listing the missing
and unexpected keys.

Image sizes: each halo layer needs its input map, ``ceil(H / r)`` at reduction ``r``, to be a multiple of its
block size; for the timm models (block 8, halo layers at reductions 8/16 to 32) that is any multiple of 256 for
``halonet26t`` and ``halonet50ts`` and of 256 for ``sehalonet33ts``. Other sizes raise a ``ValueError`` naming
the image size and the nearest sizes that fit, at construction (``img_size=``) and in forward.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from timm.layers import BatchNormAct2d, ConvNormAct, make_divisible
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import byoanet as timm_byoanet
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg, SelfAttnBlock
from timm.models.byobnet import checkpoint_filter_fn as byob_checkpoint_filter_fn
from torch import Tensor, nn

from ..nn.halo import HaloAttention
from ._pretrained import counterpart_cfgs, timm_pretrained_cfg

__all__ = ["PAPER_FAMILY", "TIMM_COUNTERPARTS", "FoldedConvNormAct", "HaloBottleneck", "HaloNet",
           "checkpoint_filter_fn", "halonet_cfg"]

TIMM_COUNTERPARTS: dict[str, str] = {
    "visattn_halonet26t": "halonet26t",
    "visattn_sehalonet33ts": "sehalonet33ts",
    "visattn_halonet50ts": "halonet50ts",
}
"""visattn model name -> the timm model with the same architecture and weights."""

PAPER_FAMILY: dict[str, tuple[int, int, float, float, int, int | None, int]] = {
    "visattn_halonet_h0": (8, 3, 1.0, 0.5, 7, None, 256),
    "visattn_halonet_h1": (8, 3, 1.0, 1.0, 10, None, 256),
    "visattn_halonet_h2": (8, 3, 1.0, 1.25, 11, None, 256),
    "visattn_halonet_h3": (10, 3, 1.0, 1.5, 12, 1024, 320),
    "visattn_halonet_h4": (12, 2, 1.0, 3.0, 12, 1280, 384),
    "visattn_halonet_h5": (14, 2, 2.5, 2.0, 23, 1536, 448),
    "visattn_halonet_h6": (8, 4, 3.0, 2.75, 24, 1536, 512),
    "visattn_halonet_h7": (10, 3, 4.0, 3.5, 26, 2048, 640),
}
"""The paper's H0-H7: ``(b, h, r_v, r_b, l_3, d_f, input size)`` (see :func:`halonet_cfg` for the provenance)."""


class HaloBottleneck(SelfAttnBlock):
    """HaloNet's bottleneck: ``1x1 conv (in -> m)``, halo attention with ``m``-wide queries and keys and
    ``value_ratio * m`` values (strided queries when ``stride`` is 2), BN + act, ``1x1 conv (-> out)``, residual.

    timm's ``SelfAttnBlock`` with the value width decoupled from the query/key width (``r_v`` of the paper);
    ``bottle_ratio`` sets ``m = out_chs * bottle_ratio``, ``num_heads`` heads of ``m / num_heads`` channels.
    """

    def __init__(self, *args: Any, value_ratio: float = 1.0, num_heads: int = 8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        layers, dd = kwargs["layers"], {k: kwargs.get(k) for k in ("device", "dtype")}
        mid = self.conv1_1x1.conv.out_channels
        values = make_divisible(mid * value_ratio)
        stride = 1 if not isinstance(self.conv2_kxk, nn.Identity) else kwargs.get("stride", 1)
        self.self_attn = layers.self_attn(mid, dim_out=values, stride=stride, num_heads=num_heads,
                                          dim_head=mid // num_heads, **dd)
        self.post_attn = layers.norm_act(values, **dd)
        self.conv3_1x1 = layers.conv_norm_act(values, kwargs["out_chs"], 1, apply_act=False, **dd)


class FoldedConvNormAct(ConvNormAct):
    """timm's ``ConvNormAct`` (same parameters, buffers and keys) whose inference runs the convolution with its batch
    norm folded in: ``act(conv(x, W * s) + beta - mu * s)``, ``s = gamma / sqrt(var + eps)`` per output channel,
    instead of a convolution and a separate pass of ``(y - mu) * s + beta`` over the whole activation map.

    Folded only where it is the same function: eval mode, no gradient recorded, a plain ``nn.Conv2d`` followed by a
    ``BatchNormAct2d`` with running statistics, not under ``torch.compile``/``torch.export`` or ``torch.jit.trace``
    (which record the unfolded module, so that a graph does not hold a snapshot of the folded weights).
    Elsewhere (training, gradients, other layers) it is timm's forward. The folded weight and bias are cached
    (not in the state dict) and rebuilt when any of the tensors they come from is replaced or changed in place
    (their version counters and storage).
    """

    _fold_cache: tuple[tuple[Tensor, ...], tuple[Any, ...], Tensor, Tensor] | None = None

    def _foldable(self) -> bool:
        bn = self.bn
        return (not self.training and not torch.is_grad_enabled() and type(self.conv) is nn.Conv2d
                and type(bn) is BatchNormAct2d and not bn.training and bn.running_mean is not None
                and bn.running_var is not None and not torch.compiler.is_compiling() and not torch.jit.is_tracing())

    def _folded(self) -> tuple[Tensor, Tensor]:
        """The folded ``(weight, bias)``; cached with the source tensors' storage pointers and version counters,
        the sources' storage held (detached) so that a replacement cannot reuse a cached address."""
        conv, bn = self.conv, self.bn
        sources = tuple(t for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
                        if t is not None)
        cacheable = not any(t.is_inference() for t in sources)
        key = (bn.eps, *((t._version, t.data_ptr(), t.device, t.dtype, t.shape) for t in sources)) if cacheable \
            else None
        cache = self._fold_cache
        if key is not None and cache is not None and cache[1] == key:
            return cache[2], cache[3]
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = -bn.running_mean * scale if conv.bias is None else (conv.bias - bn.running_mean) * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
        bias = bias.to(weight.dtype)
        self._fold_cache = (tuple(t.detach() for t in sources), key, weight, bias) if key is not None else None
        return weight, bias

    def _apply(self, fn: Any, recurse: bool = True) -> FoldedConvNormAct:
        self._fold_cache = None  # .to(), .double(), .cuda(): drop the cache rather than hold the old storage
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor) -> Tensor:
        if not self._foldable():
            return super().forward(x)
        x = self.bn.act(self.bn.drop(self.conv._conv_forward(x, *self._folded())))
        aa = getattr(self, "aa", None)
        return x if aa is None else aa(x)


def _fold_batch_norms(model: nn.Module) -> int:
    """Make every timm ``ConvNormAct`` of ``model`` a :class:`FoldedConvNormAct` (same state; the class is swapped
    because ByobNet builds its layers through a module-level factory); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is ConvNormAct:
            module.__class__ = FoldedConvNormAct
            count += 1
    return count


_MODEL_ARGS = frozenset(inspect.signature(ByobNet.__init__).parameters) - {"self", "cfg"}


def _with_visattn_halo(cfg: ByoModelCfg) -> ByoModelCfg:
    """``cfg`` with every ``'halo'`` self-attention layer (model-wide or per block) made by visattn."""
    def swap(layer: Any) -> Any:
        if layer == "halo":
            return HaloAttention
        if layer not in (None, "", HaloAttention):
            raise ValueError(f"visattn HaloNet builds halo attention only, got self_attn_layer={layer!r}")
        return layer

    def swap_block(block: ByoBlockCfg | tuple[ByoBlockCfg, ...]) -> ByoBlockCfg | tuple[ByoBlockCfg, ...]:
        if isinstance(block, tuple):
            return tuple(swap_block(b) for b in block)
        return replace(block, self_attn_layer=swap(block.self_attn_layer))

    blocks = tuple(swap_block(block) for block in cfg.blocks)
    return replace(cfg, blocks=blocks, self_attn_layer=swap(cfg.self_attn_layer))


def halonet_cfg(name: str) -> ByoModelCfg:
    """The ByobNet configuration of ``name``, a key of :data:`TIMM_COUNTERPARTS` (timm's configuration; :class:`HaloNet`
    swaps its halo layers for visattn's) or of :data:`PAPER_FAMILY`.

    The paper's H0-H7 are ResNet-like: a 7 x 7 stride-2 stem (64 channels) and 3 x 3 max-pool, then four stages of
    ``3, 3, l_3, 3`` :class:`HaloBottleneck` blocks of base widths ``64, 128, 256, 512``, each with ``base``-wide
    queries and keys (8 heads), ``r_v * base`` values and ``r_b * base`` output channels, the first block of stages
    2-4 striding its queries, an optional final ``1 x 1`` conv to ``d_f`` channels, block ``b`` and halo ``h``
    throughout. Provenance: the values of ``b, h, r_v, r_b, l_3, d_f`` are those of two independent public
    reimplementations, which agree with each other; the paper's PDF was not available here. This reading
    reproduces the paper's parameter counts as recalled (5.5, 8.1, 9.4, 11.8, 19.1, 30.7, 43.4, 67.4 M, not
    verified against the PDF either). Input sizes are the smallest the halo layers tile for H0-H5 (256, 320, 384,
    448, matching the paper's training sizes as recalled); H6 512 and H7 640 (a 600 px image, recalled as H7's, does
    not tile with ``b = 10``) are unverified. No weights were released for H0-H7.
    """
    if name in TIMM_COUNTERPARTS:
        return timm_byoanet.model_cfgs[TIMM_COUNTERPARTS[name]]
    if name not in PAPER_FAMILY:
        raise ValueError(f"unknown HaloNet {name!r}; known: {sorted(TIMM_COUNTERPARTS) + sorted(PAPER_FAMILY)}")
    b, h, rv, rb, l3, df, _ = PAPER_FAMILY[name]
    block = partial(HaloBottleneck, value_ratio=rv)
    return ByoModelCfg(
        blocks=tuple(ByoBlockCfg(type=block, d=d, c=int(base * rb), s=s, gs=0, br=1 / rb)
                     for d, base, s in ((3, 64, 1), (3, 128, 2), (l3, 256, 2), (3, 512, 2))),
        stem_chs=64, stem_type="7x7", stem_pool="maxpool",
        num_features=df or 0,
        self_attn_layer="halo", self_attn_kwargs=dict(block_size=b, halo_size=h),
    )


class HaloNet(ByobNet):
    """timm's ``ByobNet`` whose halo layers are visattn's :class:`~visattn.nn.halo.HaloAttention`, with a clear
    image-size check.

    Arguments are ``ByobNet``'s and ``fold_bn``; unknown names raise a ``TypeError`` listing the accepted ones, and
    an ``img_size`` that the halo layers cannot tile raises a ``ValueError``.

    ``fold_bn`` (default True): inference (eval, no gradient) runs every conv + batch norm with the norm folded into
    the convolution (:class:`FoldedConvNormAct`; same parameters and state dict, logits equal to timm's to float
    rounding). Measured on HaloNet-26t (batch 8, CPU): batch norm is about 12% of the forward, memory-bound, while
    the model's halo layers are about 10%. ``fold_bn=False`` keeps timm's forward op for op outside the attention.
    """

    def __init__(self, cfg: ByoModelCfg, fold_bn: bool = True, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _MODEL_ARGS)
        if unknown:
            raise TypeError(f"unknown HaloNet argument(s) {unknown}; accepted: {sorted(_MODEL_ARGS | {'fold_bn'})}")
        if not isinstance(fold_bn, bool):
            raise TypeError(f"fold_bn must be a bool, got {fold_bn!r}")
        super().__init__(_with_visattn_halo(cfg), **kwargs)
        if fold_bn:
            _fold_batch_norms(self)
        self._halo_layers = self._find_halo_layers()
        if kwargs.get("img_size") is not None:
            size = kwargs["img_size"]
            self.check_img_size((size, size) if isinstance(size, int) else tuple(size), name="img_size")

    def _find_halo_layers(self) -> tuple[tuple[int, int], ...]:
        """``(input reduction, block size)`` of every halo layer: a stage's reduction over the layer's stride."""
        reductions = {info["module"]: info["reduction"] for info in self.feature_info}
        layers = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            reduction = reductions.get(f"stages.{i}", reductions.get("final_conv") if i == last else None)
            for module in stage.modules():
                if isinstance(module, HaloAttention):
                    stride = 2 if module.block_stride == 2 or isinstance(module.pool, nn.AvgPool2d) else 1
                    layers.append((reduction // stride, module.block_size))
        return tuple(sorted(set(layers)))

    def fits(self, img_size: tuple[int, int]) -> bool:
        """Whether every halo layer's input map is a multiple of its block size for images of ``img_size``."""
        return all(math.ceil(side / r) % b == 0 for r, b in self._halo_layers for side in img_size)

    def check_img_size(self, img_size: tuple[int, int], name: str = "img_size") -> None:
        """Raise ``ValueError`` unless :meth:`fits`; the message names ``img_size`` and sizes that fit."""
        if self.fits(img_size):
            return
        step = math.lcm(*(r * b for r, b in self._halo_layers))
        near = sorted({max(step, step * round(side / step)) for side in img_size})
        layers = ", ".join(f"block {b} at reduction {r}" for r, b in self._halo_layers)
        raise ValueError(f"{name}={tuple(img_size)} does not fit this HaloNet: its halo layers ({layers}) need "
                         f"ceil(side / reduction) to be a multiple of the block size; multiples of {step} fit "
                         f"(e.g. {near})")

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be an image batch (B, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        self.check_img_size((x.shape[-2], x.shape[-1]), name="image size (H, W)")

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return super().forward_features(x)

    def forward_intermediates(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        self._check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a timm HaloNet checkpoint onto :class:`HaloNet`: the identity on keys (timm's ByobNet filter only
    reshapes legacy layouts). The strict load that follows lists missing and unexpected keys."""
    state_dict = dict(state_dict)
    state_dict = state_dict.get("state_dict", state_dict.get("model", state_dict))
    return dict(byob_checkpoint_filter_fn(state_dict, model))


def _paper_cfg(name: str) -> dict[str, Any]:
    """Pretrained configuration of a paper HaloNet: no weights, its input size (see :func:`halonet_cfg`)."""
    cfg = timm_pretrained_cfg("halonet26t")
    size = PAPER_FAMILY[name][-1]
    cfg.update(url="", hf_hub_id=None, input_size=(3, size, size), min_input_size=(3, size, size),
               pool_size=(size // 32, size // 32), license=None)
    return cfg


default_cfgs = generate_default_cfgs({
    **counterpart_cfgs(TIMM_COUNTERPARTS),
    **{name: _paper_cfg(name) for name in PAPER_FAMILY},
})


def _create(variant: str, pretrained: bool, cfg: ByoModelCfg, kwargs: dict[str, Any]) -> HaloNet:
    """Build ``variant``; ``model_cfg=`` in ``kwargs`` replaces its ByobNet configuration (e.g. a tiny one)."""
    cfg = kwargs.pop("model_cfg", cfg)
    if not isinstance(cfg, ByoModelCfg):
        raise TypeError(f"model_cfg must be a timm ByoModelCfg, got {type(cfg).__name__}")
    return build_model_with_cfg(
        HaloNet, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )


@register_model
def visattn_halonet26t(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet on a ResNet-26-T (timm ``halonet26t``, 12.5 M parameters): halo attention (block 8, halo 2) in the
    last two stages."""
    return _create("visattn_halonet26t", pretrained, halonet_cfg("visattn_halonet26t"), kwargs)


@register_model
def visattn_sehalonet33ts(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet on a ResNet-33-TS with SE (timm ``sehalonet33ts``, 13.7 M parameters): halo attention (block 8,
    halo 3) in stages 2-4."""
    return _create("visattn_sehalonet33ts", pretrained, halonet_cfg("visattn_sehalonet33ts"), kwargs)


@register_model
def visattn_halonet50ts(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet on a ResNet-50-TS (timm ``halonet50ts``, 22.7 M parameters): halo attention (block 8, halo 3) in
    the last three stages."""
    return _create("visattn_halonet50ts", pretrained, halonet_cfg("visattn_halonet50ts"), kwargs)


@register_model
def visattn_halonet_h0(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H0 of the paper (see :func:`halonet_cfg`; no released weights)."""
    return _create("visattn_halonet_h0", pretrained, halonet_cfg("visattn_halonet_h0"), kwargs)


@register_model
def visattn_halonet_h1(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H1 of the paper (see :func:`halonet_cfg`; no released weights)."""
    return _create("visattn_halonet_h1", pretrained, halonet_cfg("visattn_halonet_h1"), kwargs)


@register_model
def visattn_halonet_h2(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H2 of the paper (see :func:`halonet_cfg`; no released weights)."""
    return _create("visattn_halonet_h2", pretrained, halonet_cfg("visattn_halonet_h2"), kwargs)


@register_model
def visattn_halonet_h3(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H3 of the paper (see :func:`halonet_cfg`; no released weights)."""
    return _create("visattn_halonet_h3", pretrained, halonet_cfg("visattn_halonet_h3"), kwargs)


@register_model
def visattn_halonet_h4(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H4 of the paper (see :func:`halonet_cfg`; no released weights)."""
    return _create("visattn_halonet_h4", pretrained, halonet_cfg("visattn_halonet_h4"), kwargs)


@register_model
def visattn_halonet_h5(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H5 of the paper (see :func:`halonet_cfg`; no released weights)."""
    return _create("visattn_halonet_h5", pretrained, halonet_cfg("visattn_halonet_h5"), kwargs)


@register_model
def visattn_halonet_h6(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H6 of the paper (see :func:`halonet_cfg`; no released weights)."""
    return _create("visattn_halonet_h6", pretrained, halonet_cfg("visattn_halonet_h6"), kwargs)


@register_model
def visattn_halonet_h7(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H7 of the paper (see :func:`halonet_cfg`; no released weights)."""
    return _create("visattn_halonet_h7", pretrained, halonet_cfg("visattn_halonet_h7"), kwargs)
