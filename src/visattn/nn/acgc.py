"""S2LIC's attention context for the entropy model: adaptive channel-wise and global-inter attention (ACGC).

Paper: Wang et al., "S2LIC: Learned Image Compression with the SwinV2 Block, Adaptive Channel-wise and Global-inter
Attention Context" (arXiv 2403.14471). The latent ``y`` is cut into slices along channels; the parameters of slice
``i`` are predicted from the slices decoded before it, ``c = cat(y_hat_0, ..., y_hat_{i-1})``, by two attention
modules whose outputs join the hyperprior's (channel counts as in the official code, wyq2021/S2LIC: the channel-wise
context gives ``2 * slice_channels``, the global-inter context ``slice_channels``, ``heads = channels // 32``):

* adaptive channel-wise context (:class:`ChannelAttentionContext`): attention across the channels of ``c``, each
  channel a token over all positions (transposed attention), with a learned temperature per head,
  ``A = softmax(t_h * cos(Q_c, K_c'))`` over channels ``c'``, ``out_c = sum_c' A_cc' V_c'``;
* adaptive global-inter context (:class:`DeformableGlobalContext`): deformable attention over the whole slice map.
  Keys and values are read at ``reference + offset`` points (bilinear ``grid_sample``) on a grid ``stride`` times
  coarser than the map, the offsets predicted from the queries, so the attention weights follow the content:
  ``out_p = sum_s softmax_s(q_p . k_s / sqrt(d)) v_s``, ``k_s, v_s = W_k x(r_s + dr_s), W_v x(r_s + dr_s)``.

The official code imports both modules (``ACCTX``, ``AGCTX``) from a fork of CompressAI that is not public; the
layouts here (a Restormer-style channel attention block with a depthwise-conv feed-forward, a DAT-style deformable
attention with one offset field) are our reading of the paper's description, not a port.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

__all__ = ["ChannelAttentionContext", "DeformableGlobalContext", "channel_attention", "context_heads",
           "deformable_attention", "reference_grid"]


def context_heads(dim: int, width: int = 32) -> int:
    """Heads of a context module over ``dim`` channels: ``dim // width`` as in the official code, lowered to the
    nearest count that divides ``dim``, at least 1."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    heads = max(1, dim // width)
    while dim % heads:
        heads -= 1
    return heads


def channel_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor) -> Tensor:
    """Transposed (channel) attention: ``softmax_c'(t_h cos(q_c, k_c')) v_c'``.

    ``q, k, v``: ``(B, heads, C_h, N)`` — channels are the tokens, positions the features; ``temperature``:
    ``(heads, 1, 1)``. Returns ``(B, heads, C_h, N)``.
    """
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


class ChannelAttentionContext(nn.Module):
    """Adaptive channel-wise attention context of S2LIC (arXiv 2403.14471) on ``(B, dim, H, W)`` decoded slices.

    ``x = x + proj(channel_attention(dwconv(qkv(LN(x)))))``, ``x = x + FFN(LN(x))``, then a 1x1 convolution to
    ``out_dim`` channels (the official code uses ``out_dim = 2 * slice_channels``).

    Args:
        dim: channels of the decoded slices (``i * slice_channels`` for slice ``i``).
        out_dim: output channels.
        num_heads: heads; None gives :func:`context_heads` (``dim // 32``). Must divide ``dim``.
        ffn_ratio: hidden width of the feed-forward relative to ``dim``.
    """

    def __init__(self, dim: int, out_dim: int, num_heads: int | None = None, ffn_ratio: float = 2.0) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        heads = context_heads(dim) if num_heads is None else num_heads
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or dim % heads:
            raise ValueError(f"num_heads must be a positive int dividing dim={dim}, got {num_heads!r}")
        hidden = max(1, int(dim * ffn_ratio))
        self.dim, self.out_dim, self.num_heads = dim, out_dim, heads
        self.norm1 = LayerNorm2d(dim)
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Conv2d(dim, dim, 1)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
                                 nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.out = nn.Conv2d(dim, out_dim, 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, out_dim={self.out_dim}, num_heads={self.num_heads}"

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of the normalised input as ``(B, heads, dim / heads, H W)``."""
        b, c, h, w = x.shape
        qkv = self.qkv_dw(self.qkv(self.norm1(x))).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.unbind(1)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, dim, H, W)`` -> ``(B, out_dim, H, W)``."""
        _check_map(x, self.dim)
        b, c, h, w = x.shape
        q, k, v = self.qkv_heads(x)
        x = x + self.proj(channel_attention(q, k, v, self.temperature).reshape(b, c, h, w))
        x = x + self.ffn(self.norm2(x))
        return self.out(x)


def _check_map(x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != dim:
        raise ValueError(f"x must be shaped (B, {dim}, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")


def reference_grid(size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Centres of a ``(Hk, Wk)`` grid of cells covering ``[-1, 1]^2`` as ``(Hk, Wk, 2)`` ``(x, y)`` pairs, the
    convention of ``grid_sample(..., align_corners=False)``."""
    hk, wk = size
    ys = (torch.arange(hk, dtype=dtype, device=device) * 2 + 1) / hk - 1
    xs = (torch.arange(wk, dtype=dtype, device=device) * 2 + 1) / wk - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1)


def deformable_attention(q: Tensor, x: Tensor, points: Tensor, key: nn.Module, value: nn.Module,
                         num_heads: int) -> Tensor:
    """Attention of every query position to features sampled at ``points``.

    ``q``: ``(B, C, H, W)`` queries; ``x``: ``(B, C, H, W)`` the map keys and values are read from; ``points``:
    ``(B, Hk, Wk, 2)`` sampling locations in ``[-1, 1]`` ``(x, y)`` (bilinear, zeros outside, align_corners=False);
    ``key``/``value``: 1x1 convolutions applied to the samples. ``softmax(q k^T / sqrt(d)) v`` per head; returns
    ``(B, C, H, W)``.
    """
    b, c, h, w = q.shape
    sampled = F.grid_sample(x, points, mode="bilinear", padding_mode="zeros", align_corners=False)
    d = c // num_heads
    k = key(sampled).reshape(b, num_heads, d, -1).transpose(-2, -1)
    v = value(sampled).reshape(b, num_heads, d, -1).transpose(-2, -1)
    qh = q.reshape(b, num_heads, d, h * w).transpose(-2, -1)
    out = F.scaled_dot_product_attention(qh, k, v)
    return out.transpose(-2, -1).reshape(b, c, h, w)


class DeformableGlobalContext(nn.Module):
    """Adaptive global-inter context of S2LIC (arXiv 2403.14471): deformable attention over the decoded slices.

    Queries ``q = W_q LN(x)`` at every position; an offset network (depthwise ``(stride + 1)``-conv with stride
    ``stride``, GELU, 1x1 conv to 2 channels, ``tanh``, scaled by ``offset_range`` grid cells) moves each of the
    ``ceil(H / stride) x ceil(W / stride)`` reference points; keys and values come from ``LN(x)`` sampled there.
    ``x = x + proj(attention)``, then a 1x1 convolution to ``out_dim`` (``slice_channels`` in the official code).
    The offset convolution starts at zero, so an untrained module samples the regular grid.

    Args:
        dim: channels of the decoded slices.
        out_dim: output channels.
        num_heads: heads; None gives :func:`context_heads`. Must divide ``dim``.
        stride: reference-grid spacing in positions.
        offset_range: largest offset, in reference-grid cells.
    """

    def __init__(self, dim: int, out_dim: int, num_heads: int | None = None, stride: int = 2,
                 offset_range: float = 2.0) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("out_dim", out_dim), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        heads = context_heads(dim) if num_heads is None else num_heads
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or dim % heads:
            raise ValueError(f"num_heads must be a positive int dividing dim={dim}, got {num_heads!r}")
        if not (isinstance(offset_range, (int, float)) and offset_range >= 0 and math.isfinite(offset_range)):
            raise ValueError(f"offset_range must be a finite number >= 0, got {offset_range!r}")
        self.dim, self.out_dim, self.num_heads = dim, out_dim, heads
        self.stride, self.offset_range = stride, float(offset_range)
        self.norm = LayerNorm2d(dim)
        self.q = nn.Conv2d(dim, dim, 1)
        self.offset = nn.Sequential(nn.Conv2d(dim, dim, stride + 1, stride=stride, padding=stride // 2, groups=dim),
                                    nn.GELU(), nn.Conv2d(dim, 2, 1, bias=False))
        nn.init.zeros_(self.offset[-1].weight)
        self.k = nn.Conv2d(dim, dim, 1)
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, out_dim, 1)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, out_dim={self.out_dim}, num_heads={self.num_heads}, stride={self.stride}, "
                f"offset_range={self.offset_range}")

    def sampling_points(self, q: Tensor) -> Tensor:
        """``(B, Hk, Wk, 2)`` locations ``reference + offset`` in ``[-1, 1]`` ``(x, y)`` for the queries ``q``."""
        offset = torch.tanh(self.offset(q)).permute(0, 2, 3, 1)
        hk, wk = offset.shape[1:3]
        step = torch.stack((offset[..., 0] * (2.0 / wk), offset[..., 1] * (2.0 / hk)), dim=-1)
        return reference_grid((hk, wk), offset.dtype, offset.device) + step * self.offset_range

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, dim, H, W)`` -> ``(B, out_dim, H, W)``."""
        _check_map(x, self.dim)
        normed = self.norm(x)
        q = self.q(normed)
        x = x + self.proj(deformable_attention(q, normed, self.sampling_points(q), self.k, self.v, self.num_heads))
        return self.out(x)
