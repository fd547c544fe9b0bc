"""Neighborhood attention modules in 1, 2 and 3 dimensions, channels-last like NATTEN's.

Papers: Hassani et al., "Neighborhood Attention Transformer" (arXiv 2204.07143), "Dilated Neighborhood Attention
Transformer" (arXiv 2209.15001) and "Faster Neighborhood Attention" (arXiv 2403.04690). Each token attends to the
``kernel_size`` nearest tokens of its dilation group along every axis (windows shifted inward at the borders,
strided and causal variants as in NATTEN):

    ``out_i = proj( concat_heads( sum_{j in N(i)} softmax_j(q_i . k_j * scale) v_j ) )``,
    ``q, k, v = qkv(x)``

with ``N(i)`` given by :func:`visattn.masks.neighborhood_mask`, computed by :func:`visattn.ops.masked_attention`
(the engine :mod:`visattn.ops.dispatch` picks: the fused C++ kernels on the CPU). The constructors take NATTEN
0.21's arguments in NATTEN's order and names (``embed_dim, num_heads, kernel_size, stride, dilation, is_causal,
qkv_bias, qk_scale, proj_drop``; visattn's ``attn_drop`` is keyword-only) and the parameter names follow NATTEN's
modules (``qkv``, ``proj``), so a NATTEN call and its weights carry over unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .._checks import check_heads, check_scale, per_axis, per_axis_bool
from ..masks import neighborhood_mask
from ..ops import masked_attention


class NeighborhoodAttention(nn.Module):
    """Multi-head neighborhood self-attention over ``(B, *spatial, embed_dim)`` with ``ndim`` spatial axes.

    Args:
        ndim: spatial axes (1, 2 or 3).
        embed_dim: channels; divisible by ``num_heads`` (NATTEN's name).
        num_heads: attention heads.
        kernel_size, stride, dilation: per axis (an int for all axes, or one per axis); ``stride <= kernel_size``.
        is_causal: per axis, keys must not come after the query.
        qkv_bias: bias in the qkv projection.
        qk_scale: logit scale (NATTEN's name; stored as ``scale``), ``head_dim ** -0.5`` by default.
        proj_drop: dropout after the output projection.
        attn_drop: attention dropout (training only); keyword-only, NATTEN has none.
    """

    def __init__(
        self,
        ndim: int,
        embed_dim: int,
        num_heads: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        is_causal: bool | Sequence[bool] = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
        check_heads(embed_dim, num_heads, "embed_dim")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop!r}")
        self.ndim = ndim
        self.dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kernel_size = per_axis(kernel_size, ndim, "kernel_size")
        self.stride = per_axis(stride, ndim, "stride")
        self.dilation = per_axis(dilation, ndim, "dilation")
        self.is_causal = per_axis_bool(is_causal, ndim, "is_causal")
        for axis, (k, s) in enumerate(zip(self.kernel_size, self.stride, strict=True)):
            if s > k:
                raise ValueError(f"stride must be <= kernel_size on axis {axis}, got stride={s}, kernel_size={k}")
        self.scale = self.head_dim ** -0.5 if qk_scale is None else check_scale(qk_scale, "qk_scale")
        self.attn_drop = attn_drop
        self.mask = neighborhood_mask(self.kernel_size, self.stride, self.dilation, self.is_causal)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, dilation={self.dilation}, is_causal={self.is_causal}")

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, *spatial, embed_dim)`` with ``ndim`` spatial axes; returns the same shape."""
        if x.dim() != self.ndim + 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be shaped (B, {', '.join('L' + str(a) for a in range(self.ndim))}, "
                             f"embed_dim={self.dim}), got {tuple(x.shape)}")
        batch = x.shape[0]
        spatial = tuple(int(s) for s in x.shape[1:-1])
        qkv = self.qkv(x).reshape(batch, math.prod(spatial), 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = masked_attention(q, k, v, self.mask, spatial, scale=self.scale,
                               dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(x.shape)
        return self.proj_drop(self.proj(out))


class NeighborhoodAttention1d(NeighborhoodAttention):
    """Neighborhood attention over ``(B, L, embed_dim)``, arguments as ``natten.NeighborhoodAttention1D`` (see
    :class:`NeighborhoodAttention`)."""

    def __init__(self, embed_dim: int, num_heads: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, dilation: int | Sequence[int] = 1,
                 is_causal: bool | Sequence[bool] = False, qkv_bias: bool = True, qk_scale: float | None = None,
                 proj_drop: float = 0.0, *, attn_drop: float = 0.0) -> None:
        super().__init__(1, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale,
                         proj_drop, attn_drop=attn_drop)


class NeighborhoodAttention2d(NeighborhoodAttention):
    """Neighborhood attention over ``(B, H, W, embed_dim)``, arguments as ``natten.NeighborhoodAttention2D`` (see
    :class:`NeighborhoodAttention`)."""

    def __init__(self, embed_dim: int, num_heads: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, dilation: int | Sequence[int] = 1,
                 is_causal: bool | Sequence[bool] = False, qkv_bias: bool = True, qk_scale: float | None = None,
                 proj_drop: float = 0.0, *, attn_drop: float = 0.0) -> None:
        super().__init__(2, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale,
                         proj_drop, attn_drop=attn_drop)


class NeighborhoodAttention3d(NeighborhoodAttention):
    """Neighborhood attention over ``(B, T, H, W, embed_dim)``, arguments as ``natten.NeighborhoodAttention3D`` (see
    :class:`NeighborhoodAttention`)."""

    def __init__(self, embed_dim: int, num_heads: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, dilation: int | Sequence[int] = 1,
                 is_causal: bool | Sequence[bool] = False, qkv_bias: bool = True, qk_scale: float | None = None,
                 proj_drop: float = 0.0, *, attn_drop: float = 0.0) -> None:
        super().__init__(3, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale,
                         proj_drop, attn_drop=attn_drop)
