"""Swin-V2 window attention: scaled cosine attention with a log-spaced continuous position bias.

Paper: Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution" (arXiv 2111.09883), used as the
transform block of Wang et al., "S2LIC: Learned Image Compression with the SwinV2 Block, Adaptive Channel-wise
and Global-inter Attention Context" (arXiv 2403.14471). Inside each window, token i attends to token j with

    Sim(q_i, k_j) = cos(q_i, k_j) / tau + B_ij,     tau = 1 / exp(min(logit_scale, log(1 / 0.01))) per head,
    B_ij = 16 * sigmoid(G(dx_ij, dy_ij)),           G = Linear(2, 512) -> ReLU -> Linear(512, heads),

on log-spaced relative coordinates ``x_hat = sign(x) * log2(1 + |8 x / (W - 1)|) / log2(8)`` (``W`` is the
window, or the pre-training window when given), so the coordinates span [-1, 1]. Parameter names follow
``timm.models.swin_transformer_v2.WindowAttention`` (``qkv``, ``q_bias``, ``v_bias``, ``logit_scale``,
``cpb_mlp``, ``proj``): its state_dict loads here unchanged and gives the same output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks
from .._checks import check_heads, per_axis
from ..ops.scaled_cosine import cosine_logit_scale
from ..registry import register_mixer
from .masked import MaskedMixer

SHIFT_MASK_VALUE = -100.0
"""Additive logit between tokens from different regions of a shifted window (timm and the official code)."""


def _pair(value: int | Sequence[int], name: str, minimum: int = 1) -> tuple[int, int]:
    first, second = per_axis(value, 2, name, minimum)
    return first, second


def log_spaced_relative_coords(window_size: tuple[int, int], pretrained_window_size: tuple[int, int] = (0, 0),
                               dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """Relative offsets ``(dy, dx)`` of a window on Swin-V2's log scale, shaped ``(2 Wh - 1, 2 Ww - 1, 2)``.

    ``x_hat = sign(x) log2(1 + |8 x / (W' - 1)|) / log2(8)`` with ``W'`` the pre-training window when it is
    non-zero, else the window itself (``max(W' - 1, 1)`` so a window of 1 gives 0). Computed in float64.
    """
    norm = pretrained_window_size if pretrained_window_size[0] > 0 else window_size
    axes = [torch.arange(1 - w, w, dtype=torch.float64, device=device) * 8.0 / max(p - 1, 1)
            for w, p in zip(window_size, norm, strict=True)]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return (torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)).to(dtype)


def relative_position_index(window_size: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """``(Wh Ww, Wh Ww)`` index into the flattened ``(2 Wh - 1) x (2 Ww - 1)`` table of relative offsets."""
    wh, ww = window_size
    rows = torch.arange(wh, device=device).repeat_interleave(ww)
    cols = torch.arange(ww, device=device).repeat(wh)
    dy = rows[:, None] - rows[None, :] + wh - 1
    dx = cols[:, None] - cols[None, :] + ww - 1
    return dy * (2 * ww - 1) + dx


class WindowAttentionV2(nn.Module):
    """Swin-V2 window attention on ``(num_windows * B, Wh * Ww, C)`` windows, as timm's ``WindowAttention``.

    Args:
        dim: channels C, divisible by ``num_heads``.
        window_size: ``(Wh, Ww)`` (or an int for a square window).
        num_heads: attention heads.
        qkv_bias: learn ``q_bias`` and ``v_bias`` (k has no bias, as in Swin-V2).
        attn_drop: attention dropout probability.
        proj_drop: dropout after the output projection.
        pretrained_window_size: window of pre-training used to normalise the relative coordinates; 0 = the
            window itself.
    """

    def __init__(self, dim: int, window_size: int | Sequence[int], num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0,
                 pretrained_window_size: int | Sequence[int] = (0, 0)) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = _pair(window_size, "window_size")
        self.pretrained_window_size = _pair(pretrained_window_size, "pretrained_window_size", minimum=0)
        self.attn_drop = attn_drop

        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(512, num_heads, bias=False))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size),
                             persistent=False)

    @property
    def window_area(self) -> int:
        return self.window_size[0] * self.window_size[1]

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, "
                f"pretrained_window_size={self.pretrained_window_size}")

    def position_bias(self) -> Tensor:
        """Continuous position bias ``16 sigmoid(G(coords))`` gathered to ``(heads, Wh Ww, Wh Ww)``."""
        weight = self.cpb_mlp[0].weight
        coords = log_spaced_relative_coords(self.window_size, self.pretrained_window_size, weight.dtype,
                                            weight.device)
        table = self.cpb_mlp(coords).reshape(-1, self.num_heads)
        n = self.window_area
        bias = table[self.relative_position_index.reshape(-1)].reshape(n, n, self.num_heads).permute(2, 0, 1)
        return 16.0 * torch.sigmoid(bias)

    def attention_bias(self, mask: Tensor | None = None) -> Tensor:
        """Position bias plus the additive ``mask``, as the 4-D float mask of one SDPA call over
        ``(B, num_windows * heads)`` batches: ``(1, num_windows * heads, N, N)`` (``num_windows = 1`` without
        a mask).

        Reused between calls while no gradient is recorded and neither the MLP nor the mask changed: the cache
        key holds each tensor's storage, version counter (bumped by every in-place update, ``load_state_dict``
        and optimiser steps included), shape, device and dtype, and the window sizes.
        """
        params = tuple(self.cpb_mlp.parameters())
        tensors = params if mask is None else (*params, mask)
        if (torch.is_grad_enabled() or torch.compiler.is_compiling()
                or any(t.is_inference() or t.device.type == "meta" for t in tensors)):
            return self._attention_bias(mask)
        key = (tuple((t.data_ptr(), t._version, t.shape, t.device, t.dtype) for t in tensors), self.window_size,
               self.pretrained_window_size)
        cached = self.__dict__.get("_bias_cache")
        if cached is None or cached[0] != key:
            cached = (key, self._attention_bias(mask))
            self.__dict__["_bias_cache"] = cached
        return cached[1]

    def _attention_bias(self, mask: Tensor | None) -> Tensor:
        bias = self.position_bias()
        n = bias.shape[-1]
        if mask is not None:
            bias = bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)
        return bias.reshape(1, -1, n, n)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of ``x`` ``(B_, N, C)`` as ``(B_, heads, N, head_dim)``; k carries no bias."""
        b, n, c = x.shape
        qkv = self._qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _qkv(self, x: Tensor) -> Tensor:
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        return F.linear(x, self.qkv.weight, bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x``: ``(num_windows * B, Wh * Ww, C)``; ``mask``: additive ``(num_windows, Wh * Ww, Wh * Ww)``.

        One layout copy puts q, k, v as ``(3, B, num_windows * heads, N, head_dim)``, so that a window's mask
        broadcasts over the batch in one fused SDPA call; q and k are normalised together, the per-head
        ``1 / tau`` folded into q's inverse norm.
        """
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"x must be shaped (num_windows * B, Wh * Ww, C), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        windows, n, c = x.shape
        if n != self.window_area or c != self.dim:
            raise ValueError(f"x must be shaped (num_windows * B, {self.window_area}, {self.dim}) for "
                             f"window_size={self.window_size}, dim={self.dim}; got {tuple(x.shape)}")
        groups = 1
        if mask is not None:
            if mask.dim() != 3 or mask.shape[1:] != (n, n) or windows % mask.shape[0]:
                raise ValueError(f"mask must be shaped (num_windows, {n}, {n}) with num_windows dividing "
                                 f"{windows}, got {tuple(mask.shape)}")
            groups = mask.shape[0]
        heads, batch = self.num_heads, windows // groups
        qkv = self._qkv(x).reshape(batch, groups, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        qkv = qkv.reshape(3, batch, groups * heads, n, c // heads)
        qk, v = qkv[:2], qkv[2]
        inverse_norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min(1e-12).reciprocal()
        scale = cosine_logit_scale(self.logit_scale).to(qk.dtype).repeat(groups, 1, 1)
        factor = torch.stack((scale, torch.ones_like(scale)))[:, None]
        q, k = (qk * (inverse_norm * factor)).unbind(0)
        dropout_p = self.attn_drop if self.training else 0.0
        # A 4-D float mask keeps SDPA on its fused CPU kernel; a 3-D one falls back to the math path.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.attention_bias(mask).to(q.dtype),
                                             dropout_p=dropout_p, scale=1.0)
        out = out.reshape(batch, groups, heads, n, -1).transpose(2, 3).reshape(windows, n, c)
        return self.proj_drop(self.proj(out))


def window_partition(x: Tensor, window_size: tuple[int, int]) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * H/Wh * W/Ww, Wh * Ww, C)``, windows in row-major order."""
    b, h, w, c = x.shape
    wh, ww = window_size
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_merge(windows: Tensor, window_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * num_windows, Wh * Ww, C)`` -> ``(B, H, W, C)``."""
    (h, w), (wh, ww), c = size, window_size, windows.shape[-1]
    x = windows.reshape(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_regions(size: tuple[int, int], window_size: tuple[int, int], shift_size: tuple[int, int],
                           device: torch.device | None = None) -> Tensor:
    """Region label of each token of the (padded) ``(H, W)`` grid after the cyclic shift, as in Swin.

    Per shifted axis the last ``shift`` rows (columns) form region 2, the ``window - shift`` before them region 1,
    the rest region 0; an axis without shift is one region. The label of a token is ``3 * row_region +
    col_region``.
    """
    labels = []
    for length, window, shift in zip(size, window_size, shift_size, strict=True):
        pos = torch.arange(length, device=device)
        region = (pos >= length - window).long() + (pos >= length - shift).long()
        labels.append(region if shift else torch.zeros_like(pos))
    return labels[0][:, None] * 3 + labels[1][None, :]


def shifted_window_mask(size: tuple[int, int], window_size: tuple[int, int], shift_size: tuple[int, int],
                        dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """Additive ``(num_windows, Wh Ww, Wh Ww)`` mask: -100 between tokens of different shift regions, else 0."""
    regions = shifted_window_regions(size, window_size, shift_size, device)
    windows = window_partition(regions[None, :, :, None], window_size)[..., 0]
    differ = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(differ.shape, dtype=dtype, device=device).masked_fill(differ, SHIFT_MASK_VALUE)


class ShiftedWindowAttentionV2(nn.Module):
    """Swin-V2 (shifted) window attention on channels-last maps ``(B, H, W, C)``.

    The attention path of ``timm.models.swin_transformer_v2.SwinTransformerV2Block``: roll the map by
    ``-shift_size``, pad bottom/right with zeros to a multiple of the window, attend inside each window with
    :class:`WindowAttentionV2` and an additive -100 between tokens from different shift regions (timm's and the
    official value, kept for weight parity: a large negative logit, not an exact -inf mask), merge, crop
    and roll back. Unless ``always_partition``, an axis no longer than the window uses a window of its own
    length and no shift (Swin's rule). Padded tokens take part in attention as in timm and the official code.

    Args:
        dim: channels C, divisible by ``num_heads``.
        input_resolution: ``(H, W)`` the window and shift sizes are fitted to.
        window_size: ``(Wh, Ww)`` or an int.
        shift_size: cyclic shift per axis, ``0 <= shift < window`` (Swin uses ``window // 2`` every other block).
        num_heads: attention heads.
        qkv_bias, attn_drop, proj_drop, pretrained_window_size: as in :class:`WindowAttentionV2`.
        always_partition: keep the given window and shift even when the map is smaller than the window.
        padding: pad maps whose size is not a multiple of the window; when False such maps raise ``ValueError``.
    """

    def __init__(self, dim: int, input_resolution: int | Sequence[int], window_size: int | Sequence[int],
                 shift_size: int | Sequence[int], num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, pretrained_window_size: int | Sequence[int] = 0,
                 always_partition: bool = False, padding: bool = True) -> None:
        super().__init__()
        self.input_resolution = _pair(input_resolution, "input_resolution")
        target_window = _pair(window_size, "window_size")
        target_shift = _pair(shift_size, "shift_size", minimum=0)
        for shift, window in zip(target_shift, target_window, strict=True):
            if shift >= window:
                raise ValueError(f"shift_size must be smaller than window_size on each axis, got "
                                 f"shift_size={target_shift}, window_size={target_window}")
        if always_partition:
            self.window_size, self.shift_size = target_window, target_shift
        else:
            self.window_size = tuple(min(r, w) for r, w in zip(self.input_resolution, target_window, strict=True))
            self.shift_size = tuple(0 if r <= w else s for r, w, s in
                                    zip(self.input_resolution, self.window_size, target_shift, strict=True))
        self.padding = padding
        if not padding:
            self._check_divisible(self.input_resolution, "input_resolution")
        self.attn = WindowAttentionV2(dim, self.window_size, num_heads, qkv_bias, attn_drop, proj_drop,
                                      pretrained_window_size)
        self.register_buffer("attn_mask", self.shift_mask(self.padded_size(self.input_resolution)), persistent=False)

    def extra_repr(self) -> str:
        return (f"input_resolution={self.input_resolution}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}, padding={self.padding}")

    def _check_divisible(self, size: tuple[int, int], name: str) -> None:
        if any(s % w for s, w in zip(size, self.window_size, strict=True)):
            raise ValueError(f"window_size={self.window_size} must divide {name}={size} when padding=False "
                             f"(a window larger than the map, or one that does not tile it, needs padding=True)")

    def padded_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``size`` rounded up to a multiple of the window on each axis."""
        return tuple(math.ceil(s / w) * w for s, w in zip(size, self.window_size, strict=True))

    def shift_mask(self, size: tuple[int, int], dtype: torch.dtype = torch.float32,
                   device: torch.device | None = None) -> Tensor | None:
        """Shift mask for a padded map of ``size``, or None when there is no shift."""
        if not any(self.shift_size):
            return None
        return shifted_window_mask(size, self.window_size, self.shift_size, dtype, device)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be shaped (B, H, W, C), got {tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        _, h, w, c = x.shape
        if not self.padding:
            self._check_divisible((h, w), "x's (H, W)")
        shift = self.shift_size
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        pad_h, pad_w = ((-s) % win for s, win in zip((h, w), self.window_size, strict=True))
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        size = (h + pad_h, w + pad_w)
        if self.attn_mask is not None and size == self.padded_size(self.input_resolution):
            mask = self.attn_mask.to(x.dtype)
        else:
            mask = self.shift_mask(size, x.dtype, x.device)
        windows = self.attn(window_partition(x, self.window_size), mask)
        x = window_merge(windows, self.window_size, size)[:, :h, :w, :]
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x.contiguous()


class CosineWindowMixer(MaskedMixer):
    """Swin-V2 scaled cosine attention inside non-overlapping windows of the token grid (no position bias).

    ``out_i = sum_{j in window(i)} softmax_j(cos(q_i, k_j) * exp(min(s_h, log 100))) v_j`` with a learned log
    scale ``s_h`` per head (``logit_scale``, initialised to log 10). Paper: Swin Transformer V2 (arXiv
    2111.09883); S2LIC (arXiv 2403.14471) builds its transform blocks from it. ``window_size=None`` attends over
    the whole grid. The continuous position bias belongs to :class:`WindowAttentionV2`. Prefix tokens are
    global both ways.
    """

    def __init__(self, num_heads: int, window_size: int | Sequence[int] | None = 8, backend: str = "auto",
                 attn_drop: float = 0.0) -> None:
        mask = masks.full_mask() if window_size is None else masks.window_mask(window_size)
        super().__init__(mask, backend, scale=1.0, attn_drop=attn_drop)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        self.num_heads = num_heads
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))

    def cosine_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Unit-norm q scaled by ``1 / tau`` per head, and unit-norm k, so that ``q . k = cos(q, k) / tau``."""
        if q.dim() != 4 or q.shape[1] != self.num_heads:
            raise ValueError(f"q must be shaped (B, heads={self.num_heads}, N, head_dim), got {tuple(q.shape)}")
        scale = cosine_logit_scale(self.logit_scale).to(q.dtype)
        return F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        q, k = self.cosine_qk(q, k)
        return super().forward(q, k, v, shape, attn_mask)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        q, k = self.cosine_qk(q, k)
        return super().attention_weights(q, k, shape)


@register_mixer("swin_v2", paper="swin_v2", complexity="O(N P^d)", family="structured",
                faces=("definition", "module", "timm"))
def swin_v2(num_heads: int, window_size: int | Sequence[int] | None = 8, backend: str = "auto",
            attn_drop: float = 0.0) -> CosineWindowMixer:
    """Swin-V2 scaled cosine window attention, learned per-head temperature (also S2LIC's transform blocks).

    Papers: "Swin Transformer V2" (paper key ``swin_v2``, arXiv 2111.09883) and S2LIC (paper key ``s2lic``,
    arXiv 2403.14471), whose SwinV2 transform blocks use it. ``num_heads`` sizes the learned logit scale; with
    :class:`~visattn.nn.Attention` pass a built mixer: ``Attention(dim, h, mixer=create_mixer("swin_v2",
    num_heads=h))``.
    """
    return CosineWindowMixer(num_heads, window_size, backend, attn_drop)
