"""Lens adapter for timm's window and partition attention: Swin V1 and V2 ``WindowAttention``, MaxViT / CoAtNet
``AttentionCl`` (channels-last) and ``Attention2d`` (NCHW).

While a layer is routed its instance ``forward`` is replaced by one that computes q, k, v and the additive bias as
timm does and hands them to ``lens_attention``:

- Swin V1 (Liu et al., "Swin Transformer", arXiv 2103.14030): ``softmax(q k^T / sqrt(d) + B + M)`` per window, with
  the relative position bias ``B`` and, in shifted blocks, the window mask ``M`` (0 / -100, one per window);
- Swin V2 (Liu et al., "Swin Transformer V2", arXiv 2111.09883): cosine attention
  ``softmax(cos(q, k) * exp(min(s, ln 100)) + 16 sigmoid(CPB) + M)``. The call carries ``q`` normalised and
  multiplied by the per-head logit scale, ``k`` normalised and ``scale = 1``, so that ``q k^T`` are the logits; the
  recorded ``q``/``k`` are these, not the raw projections;
- MaxViT (Tu et al., "MaxViT", arXiv 2204.01697) block and grid partitions and CoAtNet transformer blocks:
  ``softmax(q k^T / sqrt(d) + B)`` with the module's relative position bias (``rel_pos.get_bias()``, as timm's fused
  path) or the shared bias it is given.

visattn's own modules of the same mechanisms, which ``visattn_swinv2_*`` and ``visattn_maxvit_*`` run on
(:class:`~visattn.nn.swin_v2.WindowAttentionV2` on timm's windows, :class:`~visattn.nn.partition.PartitionAttention`
on the whole channels-last map, partitioning itself), are routed the same way.

The batch dim of a call is batch x windows (partitions) in timm's order; the grid is the window (partition, or for
``Attention2d`` the feature map) with no prefix tokens. Each call carries its :class:`~visattn.lens.layout.TokenLayout`
(where every window's tokens lie on the feature map): from the partition for visattn's ``PartitionAttention``, and
for timm's blocks by running the block's own roll / pad / partition once on a map of coordinates. ``hidden`` is the
block's input map, flattened to tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.models.maxxvit import Attention2d, AttentionCl
from timm.models.swin_transformer import WindowAttention as SwinWindowAttention
from timm.models.swin_transformer_v2 import WindowAttention as SwinV2WindowAttention
from torch import Tensor, nn

from ...nn.partition import PartitionAttention, merge_partitions, partition
from ...nn.swin_v2 import WindowAttentionV2, cosine_logit_scale
from ..layout import TokenLayout, grid_layout, partition_layout
from ._forward_table import ForwardTable, TableLayer, attend
from .base import probed_block_layout, route_of

FAMILY = "timm"
SWIN_V2_MAX_LOGIT_SCALE = math.log(1.0 / 0.01)


class WindowedLayer(TableLayer):
    """A timm window / partition attention module as a lens layer."""

    family = FAMILY


def _subclass_forward(module: nn.Module) -> Callable[..., Tensor] | None:
    """The lens forward of a subclass of visattn's window / partition attention (e.g. visattn_swinv2's)."""
    for cls in (WindowAttentionV2, PartitionAttention):
        if isinstance(module, cls):
            return TABLE.forwards[cls]
    return None


TABLE = ForwardTable(WindowedLayer, fallback=_subclass_forward)
claim, model_hooks = TABLE.claim, TABLE.model_hooks


def _attend(module: nn.Module, q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None,
            grid: tuple[int, ...] | None, layout: TokenLayout | None = None, hidden: Tensor | None = None) -> Tensor:
    """:func:`~._forward_table.attend` with the module's attention dropout (a rate or a ``Dropout``) and, when the
    forward gives no layout, the windows of the layer's block probed on its input map."""
    route = route_of(module)
    drop = module.attn_drop if isinstance(module.attn_drop, float) else module.attn_drop.p
    if layout is None:
        layout = probed_block_layout(route.layer, route.hidden)
    return attend(module, q, k, v, scale, bias, grid, layout, drop, hidden)


def _with_window_mask(bias: Tensor, mask: Tensor | None, batch: int) -> Tensor:
    """``bias (1, heads, N, N)`` plus the shifted-window mask ``(windows, N, N)`` of each window of each image."""
    if mask is None:
        return bias
    windows = mask.shape[0]
    return bias + mask.to(bias.dtype).repeat(batch // windows, 1, 1).unsqueeze(1)


@TABLE.register(SwinWindowAttention)
def swin_forward(module: SwinWindowAttention, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``timm.models.swin_transformer.WindowAttention.forward`` with the attention computed by the lens."""
    b, n, _ = x.shape
    q, k, v = module.qkv(x).reshape(b, n, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = _with_window_mask(module._get_rel_pos_bias(), mask, b)
    out = _attend(module, q, k, v, module.scale, bias, tuple(module.window_size))
    return module.proj_drop(module.proj(out.transpose(1, 2).reshape(b, n, -1)))


@TABLE.register(SwinV2WindowAttention)
def swin_v2_forward(module: SwinV2WindowAttention, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``timm.models.swin_transformer_v2.WindowAttention.forward`` with the attention computed by the lens."""
    b, n, c = x.shape
    if module.q_bias is None:
        qkv = module.qkv(x)
    else:
        qkv_bias = torch.cat((module.q_bias, module.k_bias, module.v_bias))
        qkv = module.qkv(x) + qkv_bias if module.qkv_bias_separate else F.linear(x, module.qkv.weight, qkv_bias)
    q, k, v = qkv.reshape(b, n, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    logit_scale = torch.clamp(module.logit_scale, max=SWIN_V2_MAX_LOGIT_SCALE).exp()
    q, k = F.normalize(q, dim=-1) * logit_scale, F.normalize(k, dim=-1)
    table = module.cpb_mlp(module.relative_coords_table).view(-1, module.num_heads)
    bias = table[module.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
    bias = _with_window_mask(16 * torch.sigmoid(bias).unsqueeze(0), mask, b)
    out = _attend(module, q, k, v, 1.0, bias, tuple(module.window_size))
    return module.proj_drop(module.proj(out.transpose(1, 2).reshape(b, n, c)))


def _partition_bias(module: AttentionCl | Attention2d, shared_rel_pos: Tensor | None) -> Tensor | None:
    return module.rel_pos.get_bias() if module.rel_pos is not None else shared_rel_pos


@TABLE.register(AttentionCl)
def attention_cl_forward(module: AttentionCl, x: Tensor, shared_rel_pos: Tensor | None = None) -> Tensor:
    """``timm.models.maxxvit.AttentionCl.forward`` (channels-last) with the attention computed by the lens."""
    b = x.shape[0]
    restore = x.shape[:-1]
    heads, dim_head = module.num_heads, module.dim_head
    if module.head_first:
        q, k, v = module.qkv(x).view(b, -1, heads, dim_head * 3).transpose(1, 2).chunk(3, dim=3)
    else:
        q, k, v = module.qkv(x).reshape(b, -1, 3, heads, dim_head).transpose(1, 3).unbind(2)
    grid = tuple(x.shape[1:-1]) if x.dim() > 3 else None
    out = _attend(module, q, k, v, module.scale, _partition_bias(module, shared_rel_pos), grid)
    return module.proj_drop(module.proj(out.transpose(1, 2).reshape(restore + (-1,))))


@TABLE.register(Attention2d)
def attention_2d_forward(module: Attention2d, x: Tensor, shared_rel_pos: Tensor | None = None) -> Tensor:
    """``timm.models.maxxvit.Attention2d.forward`` (NCHW) with the attention computed by the lens."""
    b, _, h, w = x.shape
    heads, dim_head = module.num_heads, module.dim_head
    if module.head_first:
        q, k, v = module.qkv(x).view(b, heads, dim_head * 3, -1).chunk(3, dim=2)
    else:
        q, k, v = module.qkv(x).reshape(b, 3, heads, dim_head, -1).unbind(1)
    q, k, v = (t.transpose(-1, -2) for t in (q, k, v))
    route = route_of(module)
    layout = probed_block_layout(route.layer, route.hidden, channels_first=True) or grid_layout((h, w), device=x.device)
    hidden = None if route.hidden is None or route.hidden.dim() != 4 else route.hidden.flatten(2).transpose(1, 2)
    out = _attend(module, q, k, v, module.scale, _partition_bias(module, shared_rel_pos), (h, w), layout, hidden)
    return module.proj_drop(module.proj(out.transpose(-1, -2).reshape(b, -1, h, w)))


@TABLE.register(WindowAttentionV2)
def window_attention_v2_forward(module: WindowAttentionV2, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """:class:`visattn.nn.swin_v2.WindowAttentionV2` ``forward`` with the attention computed by the lens (the call
    carries normalised ``q`` times the logit scale, normalised ``k`` and ``scale = 1``, as for timm's Swin V2)."""
    b, n, c = x.shape
    q, k, v = module.qkv_heads(x)
    q, k = F.normalize(q, dim=-1) * cosine_logit_scale(module.logit_scale), F.normalize(k, dim=-1)
    bias = _with_window_mask(module.position_bias().unsqueeze(0), mask, b)
    out = _attend(module, q, k, v, 1.0, bias, tuple(module.window_size))
    return module.proj_drop(module.proj(out.transpose(1, 2).reshape(b, n, c)))


@TABLE.register(PartitionAttention)
def partition_attention_forward(module: PartitionAttention, x: Tensor) -> Tensor:
    """:class:`visattn.nn.partition.PartitionAttention` ``forward`` ``(B, H, W, C)`` with the attention of each
    partition computed by the lens; the batch dim of a call is batch x partitions, the grid the partition."""
    module._check_input(x)
    _, h, w, _ = x.shape
    if h % module.partition_size[0] or w % module.partition_size[1]:
        raise NotImplementedError(f"the lens captures partition attention on maps divisible by the partition size "
                                  f"{module.partition_size}; got (H, W)=({h}, {w}) with pad=True")
    windows = module.qkv(partition(x, module.partition_type, module.partition_size))
    q, k, v = module._split_heads(windows)
    bias = module.rel_pos().to(x.dtype).unsqueeze(0)
    layout = partition_layout(lambda c: partition(c, module.partition_type, module.partition_size), (h, w), x.device)
    out = _attend(module, q, k, v, module.scale, bias, tuple(module.partition_size), layout)
    out = merge_partitions(out.transpose(1, 2).reshape(windows.shape[0], -1, module.dim), module.partition_type,
                           module.partition_size, (h, w))
    return module.proj_drop(module.proj(out))
