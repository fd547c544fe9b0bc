"""DaViT's dual attention: spatial window attention and channel group attention.

Paper: Ding et al., "DaViT: Dual Attention Vision Transformers" (arXiv 2204.03645). Spatial tokens attend inside
non-overlapping 7 x 7 windows with no relative position bias. Channel group attention transposes the roles of
tokens and channels: per group (head) of ``C_g = C / heads`` channels, in the released code (and timm)

    A = softmax_row((k * s)^T v)   (C_g x C_g, softmax over the last axis),   out = (A q^T)^T = q A^T,

with ``s = C_g ** -0.5``, so the cost is O(N C_g^2) per group and q is applied last. The parameter names follow
``timm.models.davit`` (``qkv``, ``proj``) so its ``WindowAttention`` and ``ChannelAttention`` weights load
unchanged and give the same output. The depthwise 3 x 3 convolutional position encoding that precedes both
attentions is timm's :class:`~timm.models.davit.ConvPosEnc`, re-exported here on first access (importing
``timm.models`` takes seconds, so it is not imported with visattn).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_heads, per_axis
from ..masks.partition import window_mask
from ..ops.channel_attention import channel_attention, channel_state_bytes, channel_weights
from ..ops.masked import masked_attention
from ..ops.recurrent_state import layout
from ..registry import register_mixer
from .token_mixer import TokenMixer

# ConvPosEnc comes from the module __getattr__ below.
__all__ = ["ChannelAttention", "ChannelGroupMixer", "ConvPosEnc", "SpatialWindowAttention"]  # noqa: F822


class ChannelGroupMixer(TokenMixer):
    """DaViT channel group attention as a token mixer (groups = heads); the grid ``shape`` is only checked.

    Prefix tokens join the keys and values like any other token. There are no token-to-token weights: the
    mechanism mixes channels, see :meth:`channel_weights`.
    """

    def __init__(self, scale: float | None = None, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        self.scale = scale

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self._no_attn_mask(attn_mask)
        self.prepare(q, k, v, shape)
        if q.shape[-1] != v.shape[-1]:
            raise ValueError(f"channel attention needs q and v with one head_dim, got q={tuple(q.shape)}, "
                             f"v={tuple(v.shape)}")
        return channel_attention(q, k, v, self.scale, self.dropout_p)

    def channel_weights(self, k: Tensor, v: Tensor) -> Tensor:
        """The ``(B, heads, head_dim, head_dim)`` channel weights ``softmax((k * scale)^T v)``."""
        return channel_weights(k, v, self.scale)

    def state_bytes(self, batch_size: int = 1, num_heads: int | None = None, head_dim: int | None = None,
                    value_dim: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """``(k s)^T v`` before the softmax: ``head_dim x Dv`` elements per group."""
        num_heads, head_dim, value_dim = layout(num_heads, head_dim, value_dim)
        return channel_state_bytes(batch_size, num_heads, head_dim, value_dim, dtype)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        raise NotImplementedError("channel attention mixes channels, not tokens: it has no (N x N) weights; "
                                  "use channel_weights(k, v)")


def channel_oracle(mixer: ChannelGroupMixer, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...]) -> Tensor:
    """Naive channel attention, sums spelled out: ``out[n, i] = sum_j A[i, j] q[n, j]`` with
    ``A[i, j] = softmax_j(scale sum_m k[m, i] v[m, j])`` (the registry's oracle for ``"channel"``)."""
    scale = k.shape[-1] ** -0.5 if mixer.scale is None else mixer.scale
    weights = torch.softmax(torch.einsum("bhmi,bhmj->bhij", k, v) * scale, dim=-1)
    return torch.einsum("bhij,bhnj->bhni", weights, q)


@register_mixer("channel", paper="davit", complexity="O(N d^2)", family="structured",
                faces=("definition", "module", "timm"), oracle=channel_oracle)
def channel(scale: float | None = None, attn_drop: float = 0.0) -> ChannelGroupMixer:
    """DaViT channel group attention: softmax((k s)^T v) over channels per head, applied to q."""
    return ChannelGroupMixer(scale=scale, attn_drop=attn_drop)


class ChannelAttention(nn.Module):
    """DaViT channel group attention on tokens ``(B, N, C)``, weight-compatible with timm's ``ChannelAttention``.

    ``proj(channel_attention(q, k, v))`` with ``q, k, v = qkv(x)`` split into ``num_heads`` groups.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``proj(q A^T)`` computed as one per-image linear map: ``x -> x M^T + m``.

        ``A`` (block-diagonal over heads) is folded into the output projection, ``P = W_proj blockdiag(A)``, so
        the ``N x C`` product ``q A^T``, its head transpose and the scaled copy of ``k`` are never formed. When the
        map has more tokens than channels (DaViT's first two stages) the query projection is folded in as well,
        ``M = P W_q`` (``C^3`` per image instead of ``N C^2``), and only ``k, v`` are projected. Same value as
        timm's ``ChannelAttention`` up to float reassociation.
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be shaped (B, N, C={self.dim}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        fold_q = n > c
        w_qkv, b_qkv = self.qkv.weight, self.qkv.bias
        if fold_q:
            kv = F.linear(x, w_qkv[c:], None if b_qkv is None else b_qkv[c:]).view(b, n, 2, heads, d)
            k, v = kv[:, :, 0], kv[:, :, 1]
        else:
            qkv = self.qkv(x).view(b, n, 3, heads, d)
            k, v = qkv[:, :, 1], qkv[:, :, 2]
        logits = torch.einsum("bnhd,bnhe->bhde", k, v)
        weights = torch.softmax(logits * self.scale, dim=-1)
        folded = torch.einsum("ohe,bhed->bohd", self.proj.weight.view(c, heads, d), weights).reshape(b, c, c)
        bias = self.proj.bias.expand(b, 1, c)
        if fold_q:
            if b_qkv is not None:
                bias = torch.baddbmm(bias, b_qkv[:c].expand(b, 1, c), folded.transpose(1, 2))
            return torch.baddbmm(bias, x, (folded @ w_qkv[:c]).transpose(1, 2))
        return torch.baddbmm(bias, qkv[:, :, 0].reshape(b, n, c), folded.transpose(1, 2))


class SpatialWindowAttention(nn.Module):
    """DaViT spatial window attention on channels-last maps ``(B, H, W, C)``, no relative position bias.

    The attention path of timm's ``SpatialBlock``: pad bottom/right with zeros to a multiple of the window (the
    padded tokens take part as keys, as in DaViT), softmax attention inside each window with timm's
    ``WindowAttention`` weights (``qkv``, ``proj``), crop. The windows are not cut out: the whole map goes to
    :func:`~visattn.ops.masked_attention` with :func:`~visattn.masks.window_mask`, whose tile engine reads each
    window in place (:meth:`attend_windows` takes already partitioned windows instead).

    Args:
        dim: channels C, divisible by ``num_heads``.
        num_heads: attention heads.
        window_size: ``(Wh, Ww)`` or an int (DaViT: 7).
        qkv_bias: bias in the qkv projection.
        padding: pad maps that the window does not tile; when False such maps raise ``ValueError``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int | Sequence[int] = 7, qkv_bias: bool = True,
                 padding: bool = True) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        wh, ww = per_axis(window_size, 2, "window_size")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = (wh, ww)
        self.padding = padding
        self._mask = window_mask((wh, ww))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, padding={self.padding}"

    def attend_windows(self, windows: Tensor) -> Tensor:
        """Softmax attention within each window: ``(num_windows * B, Wh * Ww, C)`` -> same shape."""
        b, n, c = windows.shape
        q, k, v = self.qkv(windows).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be shaped (B, H, W, C={self.dim}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        _, h, w, _ = x.shape
        pad_h, pad_w = (-h) % self.window_size[0], (-w) % self.window_size[1]
        if (pad_h or pad_w) and not self.padding:
            raise ValueError(f"window_size={self.window_size} must divide the map (H, W)={(h, w)} when "
                             f"padding=False (a window larger than the map, or one that does not tile it, needs "
                             f"padding=True)")
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        b, hp, wp, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        # no window partition: the window mask on the whole (padded) map goes to visattn's tile engines
        q, k, v = self.qkv(x).view(b, hp * wp, 3, heads, d).permute(2, 0, 3, 1, 4)
        out = masked_attention(q, k, v, self._mask, (hp, wp))
        out = out.transpose(1, 2).reshape(b, hp, wp, c)
        return self.proj(out[:, :h, :w] if pad_h or pad_w else out)


def __getattr__(name: str) -> object:
    """``ConvPosEnc`` is timm's class, imported from ``timm.models.davit`` on first access."""
    if name == "ConvPosEnc":
        from timm.models.davit import ConvPosEnc

        return ConvPosEnc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
