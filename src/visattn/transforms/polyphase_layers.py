"""Layers built on adaptive polyphase anchoring (arXiv 2306.07470): patch embedding, window partition, window and
subsampled attention, and the circular positional-encoding convolution.

Each layer anchors its input with :func:`~visattn.transforms.polyphase.polyphase_anchor` (``p`` = patch size,
window size or spatial-reduction ratio) before its stride-``p`` step; the layers that return a map on the input
grid roll the result back, so they are exactly equivariant to circular shifts of the input (up to float round-off
in reductions), and the patch embedding's token grid moves by whole tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .polyphase import _stride, polyphase_anchor, polyphase_unanchor


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


__all__ = [
    "AnchoredSubsampledAttention",
    "AnchoredWindowAttention",
    "CircularPEG",
    "ShiftEquivariantPatchEmbed",
    "anchored_window_partition",
    "anchored_window_reverse",
]


class CircularPEG(nn.Module):
    """Positional encoding generator with circular padding: ``x + DWConv_kxk(x)`` on ``(B, C, H, W)``.

    CPVT's PEG (Chu et al., arXiv 2102.10882) with ``padding_mode="circular"`` as in arXiv 2306.07470, so that it
    commutes with circular shifts (zero padding would mark the borders).
    """

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        _check_dims(dim=dim)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, padding_mode="circular")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(x)


class ShiftEquivariantPatchEmbed(nn.Module):
    """Anchored patch embedding: ``tokens = Conv_{p x p, stride p}(anchor_p(x))``, ``(B, C, H, W) -> (B, N, D)``
    (``flatten=True``) or ``(B, D, H/p, W/p)``. The token grid moves by whole tokens under any circular shift of
    ``x``, so a pooled embedding is shift-invariant (arXiv 2306.07470)."""

    def __init__(self, patch_size: int | tuple[int, int], in_chans: int, embed_dim: int,
                 norm_layer: Callable[[int], nn.Module] | None = None, flatten: bool = True, pad: bool = False,
                 bias: bool = True) -> None:
        super().__init__()
        _check_dims(in_chans=in_chans, embed_dim=embed_dim)
        self.patch_size = _stride(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()
        self.flatten, self.pad = flatten, pad

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(polyphase_anchor(x, self.patch_size, self.pad)[0])
        if self.flatten:
            return self.norm(x.flatten(2).transpose(1, 2))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def anchored_window_partition(x: Tensor, window: int | tuple[int, int], pad: bool = False
                              ) -> tuple[Tensor, Tensor]:
    """Anchor ``x`` ``(B, H, W, C)`` with ``p = window``, then cut it into windows ``(B * nW, wh * ww, C)``
    (row-major windows, row-major tokens inside). Returns ``(windows, shift)``."""
    wh, ww = _stride(window)
    x, shift = polyphase_anchor(x, (wh, ww), pad, channels_last=True)
    batch, height, width, channels = x.shape
    windows = x.reshape(batch, height // wh, wh, width // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
    return windows.reshape(-1, wh * ww, channels), shift


def anchored_window_reverse(windows: Tensor, window: int | tuple[int, int], size: tuple[int, int],
                            shift: Tensor) -> Tensor:
    """Inverse of :func:`anchored_window_partition`: windows ``(B * nW, wh * ww, C)`` -> ``(B, H, W, C)`` rolled
    back by ``shift``."""
    wh, ww = _stride(window)
    height, width = size
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // wh, width // ww, wh, ww, channels).permute(0, 1, 3, 2, 4, 5)
    return polyphase_unanchor(x.reshape(-1, height, width, channels), shift, channels_last=True)


class AnchoredWindowAttention(nn.Module):
    """Multi-head self-attention within non-overlapping ``window`` x ``window`` windows of an anchored map,
    ``(B, H, W, C) -> (B, H, W, C)``, exactly equivariant to circular shifts of the input (arXiv 2306.07470).

    ``out = unanchor(proj(SDPA_window(q, k, v)))`` with ``q, k, v = Linear(anchor_window(x))``; no positional bias
    (add a :class:`CircularPEG` before it for position information).
    """

    def __init__(self, dim: int, num_heads: int, window: int | tuple[int, int], qkv_bias: bool = True,
                 pad: bool = False) -> None:
        super().__init__()
        _check_dims(dim=dim, num_heads=num_heads)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.window, self.num_heads, self.pad = _stride(window), num_heads, pad
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        windows, shift = anchored_window_partition(x, self.window, self.pad)
        n_win, tokens, channels = windows.shape
        qkv = self.qkv(windows).reshape(n_win, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n_win, tokens, channels)
        height = x.shape[1] + (-x.shape[1]) % self.window[0]
        width = x.shape[2] + (-x.shape[2]) % self.window[1]
        out = anchored_window_reverse(self.proj(out), self.window, (height, width), shift)
        return out[:, : x.shape[1], : x.shape[2]]


class AnchoredSubsampledAttention(nn.Module):
    """Spatial-reduction attention (PVT, arXiv 2102.12122) with the key/value map anchored before its stride-``sr``
    reduction, ``(B, H, W, C) -> (B, H, W, C)``, exactly equivariant to circular shifts (arXiv 2306.07470).

    ``q = Linear(x)``; ``kv = Linear(LN(Conv_{sr x sr, stride sr}(anchor_sr(x))))``; attention of every query over
    the ``HW / sr^2`` reduced tokens (a set: its order does not matter, so whole-token shifts cancel).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True, pad: bool = False) -> None:
        super().__init__()
        _check_dims(dim=dim, num_heads=num_heads)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.sr, self.num_heads, self.pad = _stride(sr_ratio), num_heads, pad
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.reduce = nn.Conv2d(dim, dim, self.sr, stride=self.sr)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        head_dim = channels // self.num_heads
        q = self.q(x).reshape(batch, height * width, self.num_heads, head_dim).transpose(1, 2)
        anchored = polyphase_anchor(x, self.sr, self.pad, channels_last=True)[0]
        reduced = self.reduce(anchored.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        kv = self.kv(self.norm(reduced)).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, channels))

