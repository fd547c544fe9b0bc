"""Lens adapter for visattn's attention layers that are not token mixers: the layers of the ``visattn_*`` backbones.

While routed, each layer's instance ``forward`` computes q, k, v and its additive bias as the layer does and hands
them to ``lens_attention``, with the :class:`~visattn.lens.layout.TokenLayout` of the call:

- NAT / DiNAT ``NeighborhoodAttention2dRPB`` (arXiv 2204.07143, 2209.15001): ``softmax(q k^T * scale + B)`` over the
  whole (padded) map, ``B`` the relative position bias inside each query's (dilated) neighborhood and ``-inf``
  outside it (NAT eq. 2);
- HaloNet ``HaloAttention`` (arXiv 2103.12731): one call per query block of ``b x b`` tokens and its
  ``(b + 2h) x (b + 2h)`` key window, the factorised relative logits as the bias; window keys in the zero padding
  lie off the map;
- DaViT ``SpatialWindowAttention`` (arXiv 2204.03645): softmax attention inside each window of the zero-padded map;
  DaViT ``ChannelAttention``: ``A = softmax(scale * k^T v)`` over channels, ``out = (A q^T)^T``, which is attention
  with queries ``k^T``, keys ``v^T`` and values ``q^T`` (its rows are channels, so it has no token layout);
- PATNet's ``RelativePositionMHSA`` (PAT_sf, arXiv 2503.03148): softmax attention over the whole map with the iRPE
  key bias.

The block around each layer is its parent module; its input map is the ``hidden`` state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...masks import neighborhood_mask
from ...nn.davit import ChannelAttention, SpatialWindowAttention
from ...nn.feature_maps.pat_attention import RelativePositionMHSA
from ...nn.halo import HaloAttention
from ...ops.engines.dense import dense_mask
from ..layout import TokenLayout, grid_layout, grid_positions, partition_layout
from ._forward_table import ForwardTable, TableLayer, attend
from .base import route_of

FAMILY = "visattn"
NAT_MODULE = "visattn.models.nat_attention"


class VisattnModelLayer(TableLayer):
    """One of visattn's attention layers as a lens layer."""

    family = FAMILY


def _nat_forward_of(module: nn.Module) -> Callable[..., Tensor] | None:
    """NAT's lens forward for NAT's attention class, if :mod:`visattn.models.nat_attention` is imported (any NAT
    model was built)."""
    nat = sys.modules.get(NAT_MODULE)
    return nat_forward if nat is not None and type(module) is nat.NeighborhoodAttention2dRPB else None


TABLE = ForwardTable(VisattnModelLayer, fallback=_nat_forward_of)
claim, model_hooks = TABLE.claim, TABLE.model_hooks


def _cropped_layout(padded: tuple[int, int], grid: tuple[int, int], device: torch.device) -> TokenLayout:
    """The whole padded map as one window; tokens past ``grid`` (the padding) lie off the map."""
    positions = grid_positions(padded, device)
    outside = (positions[:, 0] >= grid[0]) | (positions[:, 1] >= grid[1])
    positions = positions.masked_fill(outside[:, None], -1)[None]
    return TokenLayout(positions, positions, grid)


def neighborhood_bias(rpb: Tensor, shape: tuple[int, int], kernel_size: int, dilation: int) -> Tensor:
    """``(heads, N, N)``: NAT's ``rpb[h, (y_j - y_i) / d + k - 1, (x_j - x_i) / d + k - 1]`` where key ``j`` is in
    query ``i``'s neighborhood, ``-inf`` elsewhere."""
    allowed = dense_mask(neighborhood_mask(kernel_size, dilation=dilation), shape, 0, rpb.device)
    positions = grid_positions(shape, rpb.device)
    offsets = (positions[None] - positions[:, None]).div(dilation, rounding_mode="floor") + kernel_size - 1
    offsets = offsets.clamp(0, 2 * kernel_size - 2)
    bias = rpb[:, offsets[..., 0], offsets[..., 1]]
    return bias.masked_fill(~allowed, float("-inf"))


def nat_forward(module: nn.Module, x: Tensor) -> Tensor:
    """``NeighborhoodAttention2dRPB.forward`` with the attention computed by the lens over the whole map."""
    height, width = int(x.shape[1]), int(x.shape[2])
    x = module.pad(x)
    batch, hp, wp, _ = x.shape
    q, k, v = module.qkv(x).reshape(batch, hp * wp, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    bias = neighborhood_bias(module.rpb, (hp, wp), module.kernel_size, module.dilation).to(x.dtype).unsqueeze(0)
    layout = _cropped_layout((hp, wp), (height, width), x.device)
    out = attend(module, q, k, v, module.scale, bias, (hp, wp), layout, module.attn_drop)
    out = out.transpose(1, 2).reshape(batch, hp, wp, module.dim)[:, :height, :width]
    return module.proj_drop(module.proj(out))


def halo_layout(module: HaloAttention, height: int, width: int, device: torch.device) -> TokenLayout:
    """Query blocks (strided when the layer subsamples) and their halo windows on the ``height x width`` map."""
    bs, halo, win, step = module.block_size, module.halo_size, module.win_size, module.block_stride
    origins = grid_positions((height // bs, width // bs), device) * bs
    inner = grid_positions((module.block_size_ds,) * 2, device) * step
    around = grid_positions((win, win), device) - halo
    queries = origins[:, None] + inner[None]
    keys = origins[:, None] + around[None]
    outside = (keys < 0).any(-1) | (keys[..., 0] >= height) | (keys[..., 1] >= width)
    return TokenLayout(queries, keys.masked_fill(outside[..., None], -1), (height, width))


@TABLE.register(HaloAttention)
def halo_forward(module: HaloAttention, x: Tensor) -> Tensor:
    """``HaloAttention.forward`` with each block's attention computed by the lens (calls: images x blocks)."""
    q, k, v, bias = module.blocks(x)
    batch, blocks = x.shape[0], q.shape[1]

    def per_block(t: Tensor) -> Tensor:
        return t.reshape(batch, module.num_heads, blocks, *t.shape[2:]).transpose(1, 2).flatten(0, 1)

    layout = halo_layout(module, x.shape[2], x.shape[3], x.device)
    side = module.block_size_ds
    out = attend(module, per_block(q), per_block(k), per_block(v), module.scale, per_block(bias), (side, side),
                  layout, 0.0)
    out = out.reshape(batch, blocks, module.num_heads, *out.shape[2:]).transpose(1, 2).flatten(0, 1)
    return module.merge(out, x.shape[2], x.shape[3])


def _davit_windows(x: Tensor, window: tuple[int, int]) -> Tensor:
    """A channels-last map zero-padded to whole windows, as ``(B * windows, Wh * Ww, C)`` in row-major order."""
    _, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, (-w) % window[1], 0, (-h) % window[0]))
    b, hp, wp, _ = x.shape
    x = x.reshape(b, hp // window[0], window[0], wp // window[1], window[1], c).transpose(2, 3)
    return x.reshape(-1, window[0] * window[1], c)


@TABLE.register(SpatialWindowAttention)
def davit_spatial_forward(module: SpatialWindowAttention, x: Tensor) -> Tensor:
    """``SpatialWindowAttention.forward`` with each window's attention computed by the lens (zero-padded tokens
    take part as keys, as in DaViT)."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[-1] != module.dim:
        raise ValueError(f"x must be shaped (B, H, W, C={module.dim}), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else x!r}")
    batch, h, w, c = x.shape
    (wh, ww), heads = module.window_size, module.num_heads
    if ((-h) % wh or (-w) % ww) and not module.padding:
        raise ValueError(f"window_size={module.window_size} must divide the map (H, W)={(h, w)} when padding=False")
    windows = _davit_windows(x, (wh, ww))
    n = windows.shape[1]
    q, k, v = module.qkv(windows).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    layout = partition_layout(lambda coordinates: _davit_windows(coordinates, (wh, ww)), (h, w), x.device)
    out = attend(module, q, k, v, (c // heads) ** -0.5, None, (wh, ww), layout, 0.0)
    hp, wp = h + (-h) % wh, w + (-w) % ww
    out = out.transpose(1, 2).reshape(batch, hp // wh, wp // ww, wh, ww, c).transpose(2, 3).reshape(batch, hp, wp, c)
    return module.proj(out[:, :h, :w])


@TABLE.register(ChannelAttention)
def davit_channel_forward(module: ChannelAttention, x: Tensor) -> Tensor:
    """``ChannelAttention.forward`` with ``softmax(scale * k^T v)`` computed by the lens as attention over channels
    (queries ``k^T``, keys ``v^T``, values ``q^T``: the recorded rows and columns are channels)."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != module.dim:
        raise ValueError(f"x must be shaped (B, N, C={module.dim}), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else x!r}")
    b, n, c = x.shape
    q, k, v = module.qkv(x).reshape(b, n, 3, module.num_heads, c // module.num_heads).permute(2, 0, 3, 1, 4)
    hidden = route_of(module).hidden
    if hidden is not None and hidden.dim() == 4:
        hidden = hidden.flatten(2).transpose(1, 2) if hidden.shape[1] == c else hidden.flatten(1, 2)
    out = attend(module, k.transpose(-1, -2), v.transpose(-1, -2), q.transpose(-1, -2), module.scale, None, None,
                  None, 0.0, hidden)
    return module.proj(out.permute(0, 3, 1, 2).reshape(b, n, c))


@TABLE.register(RelativePositionMHSA)
def pat_self_attention_forward(module: RelativePositionMHSA, x: Tensor) -> Tensor:
    """``RelativePositionMHSA.forward`` (PAT_sf) with the attention computed by the lens over the whole map."""
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    q, k, v = module.qkv(tokens).reshape(b, h * w, 3, module.num_heads, c // module.num_heads).permute(2, 0, 3, 1, 4)
    bias = module.position_bias(h, w).to(x.dtype).unsqueeze(0)
    out = attend(module, q, k, v, module.scale, bias, (h, w), grid_layout((h, w), device=x.device), module.attn_drop)
    out = module.proj_drop(module.proj(out.transpose(1, 2).reshape(b, h * w, c)))
    return out.transpose(1, 2).reshape(b, c, h, w)
