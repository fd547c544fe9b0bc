"""Multi-head self-attention on a feature map with iRPE relative position biases on the keys (PAT_sf's attention).

Paper: "Partial Convolution Meets Visual Attention" (arXiv 2503.03148); the relative position term is iRPE
(Wu et al., "Rethinking and Improving Relative Position Encoding for Vision Transformer", arXiv 2107.14222) in its
"bias" mode with the Euclidean method, one table per head, as released in haiduo/PartialNet:

    logits_h[i, j] = (q_i . k_j) / sqrt(d) + b_h[bucket(i, j)]
    bucket(i, j)   = beta + g(round(||p_i - p_j||_2))
    g(d)           = d                                                     if d <= alpha
                   = min(round(alpha + ln(d / alpha) / ln(gamma / alpha) (beta - alpha)), beta)   otherwise

with ``p`` the (row, column) of a pixel and ``alpha, beta, gamma = ratio, 2 ratio, 8 ratio`` (released
``ratio = 20``); there are ``2 beta + 1`` buckets (the distances only use the upper half) and the tables start at
zero. The attention runs through ``scaled_dot_product_attention`` with the bias as its float mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import divisible, feature_map, positive_int

__all__ = ["RelativePositionMHSA", "euclidean_buckets"]


def euclidean_buckets(height: int, width: int, ratio: float, device: torch.device | None = None) -> Tensor:
    """iRPE Euclidean bucket ids ``(H W, H W)`` (long) of all pixel pairs of an ``H x W`` map, row-major."""
    alpha, beta, gamma = 1.0 * ratio, 2.0 * ratio, 8.0 * ratio
    rows = torch.arange(height, device=device, dtype=torch.float32).repeat_interleave(width)
    cols = torch.arange(width, device=device, dtype=torch.float32).repeat(height)
    dist = torch.sqrt((rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2).round()
    far = alpha + torch.log(dist.clamp_min(alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    index = torch.where(dist <= alpha, dist, far.round().clamp(max=beta))
    return index.long() + int(beta)


class RelativePositionMHSA(nn.Module):
    """MHSA over the pixels of ``(B, C, H, W)`` with per-head iRPE key biases (arXiv 2503.03148 / 2107.14222).

    Args:
        channels: ``C``; ``num_heads`` must divide it.
        num_heads: heads (PATNet: 4 in T0, 6 otherwise).
        qkv_bias: bias of the q, k, v projection (released: False); the output projection has a bias.
        attn_drop, proj_drop: dropout rates (released: 0.1 each; default 0 here).
        ratio: iRPE's bucket ratio (released: 20).
    """

    def __init__(self, channels: int, num_heads: int = 6, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, ratio: float = 20.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        positive_int(channels, "channels")
        positive_int(num_heads, "num_heads")
        divisible(channels, num_heads, "channels", "num_heads")
        if not ratio > 0:
            raise ValueError(f"ratio must be > 0, got {ratio!r}")
        self.channels, self.num_heads, self.ratio = channels, num_heads, float(ratio)
        self.scale = (channels // num_heads) ** -0.5
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(channels, channels, device=device, dtype=dtype)
        self.attn_drop, self.proj_drop = float(attn_drop), nn.Dropout(proj_drop)
        self.num_buckets = 2 * int(2.0 * ratio) + 1
        self.rpe_bias = nn.Parameter(torch.zeros(num_heads, self.num_buckets, device=device, dtype=dtype))

    def position_bias(self, height: int, width: int) -> Tensor:
        """``(heads, H W, H W)``: ``b_h[bucket(i, j)]``."""
        buckets = euclidean_buckets(height, width, self.ratio, self.rpe_bias.device)
        return self.rpe_bias[:, buckets]

    def forward(self, x: Tensor) -> Tensor:
        feature_map(x, self.channels)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.position_bias(h, w).to(x.dtype).unsqueeze(0)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias,
                                             dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, h * w, c)))
        return out.transpose(1, 2).reshape(b, c, h, w)
