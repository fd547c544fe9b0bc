"""HaloNet's blocked local self-attention on a feature map ``(B, C, H, W)``.

Paper: Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones" (arXiv
2103.12731). Queries come from non-overlapping ``b x b`` blocks; each block's keys and values come from the
``w x w`` window (``w = b + 2h``) centred on it, cut from the key/value map zero-padded by the halo ``h``:

    ``out_q = sum_{k in window} softmax_k(q . k / sqrt(d) + q . R_h[x - i + w - 1] + q . R_w[y - j + w - 1]) v_k``

Padded keys are kept in the softmax (k = v = 0, so their logit is the relative term alone), as HaloNet does. On
real tokens away from the border this is ``masked_attention`` with ``halo_mask(b, h)`` plus the relative logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .relative_position import FactorizedRelativeLogits


def _check_int(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _add_scores(bias: Tensor, q: Tensor, k_t: Tensor) -> Tensor:
    """``bias + q @ k_t``: accumulated into ``bias`` in place when no graph is recorded (inference), else out of
    place (an in-place update of the bias, a view, would cost the backward a copy of its gradient)."""
    if torch.is_grad_enabled() and (bias.requires_grad or q.requires_grad or k_t.requires_grad):
        return torch.baddbmm(bias, q, k_t)
    return bias.baddbmm_(q, k_t)


class HaloAttention(nn.Module):
    """HaloNet attention, NCHW in and out; same arguments, parameter names and output as timm's ``HaloAttn``.

    Dimensions (as in timm): values have ``dim_out // num_heads`` channels per head; queries and keys have
    ``dim_head``, or ``make_divisible(dim_out * qk_ratio, 8) // num_heads`` when ``dim_head`` is None. The ``kv``
    projection's output channels are read as ``num_heads`` groups of ``[k_head, v_head]`` (timm's layout).

    Stride 2 subsamples the queries: a strided ``q`` projection with ``b / 2`` query blocks when ``b`` is even
    and ``avg_down`` is False, else full-resolution attention followed by 2 x 2 average pooling.

    Args:
        dim: input channels.
        dim_out: output channels (default ``dim``); must be divisible by ``num_heads``.
        feat_size: accepted for timm's signature (``HaloAttn`` ignores it too): halo attention runs at any
            ``(H, W)`` divisible by ``block_size``, so no size is fixed at construction.
        stride: 1 or 2.
        num_heads: attention heads.
        dim_head: query/key channels per head.
        block_size: query block side ``b``; ``H`` and ``W`` must be divisible by it.
        halo_size: halo ``h >= 0`` around each block; any size (also ``h > b``, windows then reach past the
            neighbouring blocks), as timm's ``HaloAttn``.
        qk_ratio: query/key width relative to ``dim_out`` when ``dim_head`` is None.
        qkv_bias: bias in the ``q`` and ``kv`` projections.
        avg_down: with stride 2, pool the output instead of striding the queries.
        scale_pos_embed: scale the relative logits too: ``(q . k + r) / sqrt(d)`` instead of ``q . k / sqrt(d) + r``.
        device, dtype: where and in which dtype the parameters are created (timm's ``device``/``dtype``).
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size: tuple[int, int] | None = None,
                 stride: int = 1, num_heads: int = 8, dim_head: int | None = None, block_size: int = 8,
                 halo_size: int = 3, qk_ratio: float = 1.0, qkv_bias: bool = False, avg_down: bool = False,
                 scale_pos_embed: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        for name, value, minimum in (("dim", dim, 1), ("dim_out", dim_out, 1), ("num_heads", num_heads, 1),
                                     ("block_size", block_size, 1), ("halo_size", halo_size, 0)):
            _check_int(value, name, minimum)
        if dim_out % num_heads:
            raise ValueError(f"dim_out must be divisible by num_heads, got dim_out={dim_out}, num_heads={num_heads}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if dim_head is None:
            if not qk_ratio > 0:
                raise ValueError(f"qk_ratio must be > 0, got {qk_ratio!r}")
            from timm.layers import make_divisible

            dim_head = make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
            if dim_head < 1:
                raise ValueError(f"qk_ratio={qk_ratio} with dim_out={dim_out} leaves no query channels per head "
                                 f"for num_heads={num_heads}; pass dim_head")
        _check_int(dim_head, "dim_head", 1)
        self.dim = dim
        self.num_heads = num_heads
        self.dim_head_qk = dim_head
        self.dim_head_v = dim_out // num_heads
        self.scale = dim_head**-0.5
        self.scale_pos_embed = scale_pos_embed
        self.block_size = block_size
        self.halo_size = halo_size
        self.win_size = block_size + 2 * halo_size
        pool_output = stride > 1 and (avg_down or block_size % stride != 0)
        self.block_stride = stride if stride > 1 and not pool_output else 1
        self.block_size_ds = block_size // self.block_stride
        self.q = nn.Conv2d(dim, num_heads * dim_head, 1, stride=self.block_stride, bias=qkv_bias)
        self.kv = nn.Conv2d(dim, num_heads * (dim_head + self.dim_head_v), 1, bias=qkv_bias)
        self.pos_embed = FactorizedRelativeLogits(self.block_size_ds, self.win_size, dim_head, self.scale)
        self.pool = nn.AvgPool2d(2, 2) if pool_output else nn.Identity()
        self.to(device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        from timm.layers import trunc_normal_

        std = self.q.weight.shape[1] ** -0.5
        trunc_normal_(self.q.weight, std=std)
        trunc_normal_(self.kv.weight, std=std)
        trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, block_size={self.block_size}, halo_size={self.halo_size}, "
                f"block_stride={self.block_stride}, scale_pos_embed={self.scale_pos_embed}")

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, C={self.dim}, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[2:]
        if h % self.block_size or w % self.block_size:
            raise ValueError(f"x's (H, W)=({h}, {w}) must be divisible by block_size={self.block_size}")
        if isinstance(self.pool, nn.AvgPool2d) and min(h, w) < 2:
            raise ValueError(f"x's (H, W)=({h}, {w}) is too small for stride 2 with 2 x 2 average pooling")

    def _queries(self, x: Tensor, scale: float) -> Tensor:
        """``scale * q`` of every query block, ``(B * heads * blocks, b^2, d_qk)``; the scale is folded into the
        projection's (small) weight and bias rather than applied to the activations."""
        batch, _, height, width = x.shape
        n_h, n_w, b = height // self.block_size, width // self.block_size, self.block_size_ds
        weight, bias = self.q.weight, self.q.bias
        if scale != 1.0:
            weight, bias = weight * scale, None if bias is None else bias * scale
        q = F.conv2d(x, weight, bias, stride=self.block_stride)
        q = q.view(batch, self.num_heads, self.dim_head_qk, n_h, b, n_w, b).permute(0, 1, 3, 5, 4, 6, 2)
        return q.reshape(-1, b * b, self.dim_head_qk)

    def _windows(self, x: Tensor) -> Tensor:
        """Keys and values of every block's ``w x w`` window of the zero-padded map, channels first:
        ``(B * heads * blocks, d_qk + d_v, w^2)`` (one copy; ``[:, :d_qk]`` is ``k^T``, ``[:, d_qk:]`` is ``v^T``)."""
        batch, _, height, width = x.shape
        n_h, n_w, w, halo = height // self.block_size, width // self.block_size, self.win_size, self.halo_size
        kv = F.pad(self.kv(x), (halo, halo, halo, halo)).unfold(2, w, self.block_size).unfold(3, w, self.block_size)
        kv = kv.view(batch, self.num_heads, self.dim_head_qk + self.dim_head_v, n_h, n_w, w, w)
        return kv.permute(0, 1, 3, 4, 2, 5, 6).reshape(-1, self.dim_head_qk + self.dim_head_v, w * w)

    def _relative_terms(self, q: Tensor, factor: float) -> tuple[Tensor, Tensor]:
        """``factor`` times the height and width terms ``q . R_h[x - i + w - 1]`` and ``q . R_w[y - j + w - 1]`` of
        queries ``(N, b^2, d_qk)``, each ``(N, b, b, w)`` (query row ``i``, column ``j``, key row ``x`` / column
        ``y``): one GEMM of ``q`` with both tables stacked (every offset), then the ``w`` offsets each query needs."""
        b, w = self.block_size_ds, self.win_size
        tables = torch.cat([self.pos_embed.height_rel, self.pos_embed.width_rel])
        if factor != 1.0:
            tables = tables * factor
        logits = torch.matmul(q, tables.t()).view(-1, b, b, 2, 2 * w - 1)
        offsets = self.pos_embed.offsets
        height, width = logits.unbind(-2)
        height = height.take_along_dim(offsets[None, :, None, :], dim=-1)
        width = width.take_along_dim(offsets[None, None, :, :], dim=-1)
        return height, width

    def _relative_bias(self, q: Tensor, factor: float) -> Tensor:
        """``factor`` times the relative logits of queries ``(N, b^2, d_qk)`` over their whole window, built in the
        QK GEMM's layout ``(N, b^2, w^2)`` by one broadcast sum of the height and width terms."""
        height, width = self._relative_terms(q, factor)
        return (height[..., :, None] + width[..., None, :]).flatten(-2).flatten(1, 2)

    def blocks(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``q (B * heads, blocks, b^2, d_qk)``, ``k (..., w^2, d_qk)``, ``v (..., w^2, d_v)`` and the additive
        relative-logit bias ``(B * heads, blocks, b^2, w^2)`` of every query block and its halo window, for
        ``softmax(q k^T * scale + bias) v`` (the lens adapter's per-block view of :meth:`forward`)."""
        self._check_input(x)
        blocks = (x.shape[2] // self.block_size) * (x.shape[3] // self.block_size)
        q = self._queries(x, 1.0)
        bias = self._relative_bias(q, self.scale if self.scale_pos_embed else 1.0)
        kv = self._windows(x).transpose(1, 2)
        k, v = kv.split((self.dim_head_qk, self.dim_head_v), dim=-1)
        return tuple(t.unflatten(0, (-1, blocks)) for t in (q, k, v, bias))  # type: ignore[return-value]

    def merge(self, out: Tensor, height: int, width: int) -> Tensor:
        """The blocks' outputs ``(B * heads, blocks, b^2, d_v)`` of an ``height x width`` input back to the map
        ``(B, dim_out, H / stride, W / stride)``."""
        n_h, n_w, b = height // self.block_size, width // self.block_size, self.block_size_ds
        out = out.reshape(-1, self.num_heads, n_h, n_w, b, b, self.dim_head_v).permute(0, 1, 6, 2, 4, 3, 5)
        return self.pool(out.reshape(-1, self.num_heads * self.dim_head_v, n_h * b, n_w * b))

    def _single_block(self, q: Tensor, x: Tensor, factor: float) -> Tensor:
        """Attention of a map that is one block (``H = W = block_size``, ``halo > 0``), ``(B * heads, d_v, b^2)``.

        The window's real keys are then the whole map, in the projection's own layout (no padding, no window
        copy), and every other window key is zero padding: its logit is the relative term alone and it adds
        nothing to the weighted sum. The padding's softmax mass factorises over the tables: with ``I`` the rows
        (columns) of real keys and ``O`` the others, ``sum_{(x, y) outside I x I} exp(h_x + w_y) = sum_O e^h *
        sum_all e^w + sum_I e^h * sum_O e^w``, so it enters the softmax as one extra logit (its log, computed
        with ``logsumexp``; no subtraction, so no cancellation) and the GEMMs run over ``H W`` keys, not ``w^2``.
        """
        side, halo, d_qk = self.block_size, self.halo_size, self.dim_head_qk
        k, v = self.kv(x).flatten(2).view(q.shape[0], d_qk + self.dim_head_v, side * side).split(
            (d_qk, self.dim_head_v), dim=1)
        height, width = self._relative_terms(q, factor)
        inner = slice(halo, halo + side)

        def outer_lse(t: Tensor) -> Tensor:
            return torch.logaddexp(t[..., :halo].logsumexp(-1), t[..., halo + side:].logsumexp(-1))

        padding = torch.logaddexp(outer_lse(height) + width.logsumexp(-1),
                                  height[..., inner].logsumexp(-1) + outer_lse(width))
        logits = (height[..., inner, None] + width[..., None, inner]).flatten(-2).flatten(1, 2)
        logits = torch.cat([_add_scores(logits, q, k), padding.flatten(1)[..., None]], dim=-1)
        attn = logits.softmax(dim=-1)[..., :-1]
        return torch.bmm(v, attn.transpose(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, dim, H, W) -> (B, dim_out, H / stride, W / stride)``.

        Three batched GEMMs over all blocks and heads: ``logits = bias + (scale q) k^T`` accumulated into the
        relative-logit bias (in place at inference; the bias is built directly in the GEMM's layout, the query
        scale is folded into the ``q`` projection), a softmax, and ``out^T = v^T softmax^T``, which lands channels
        first as the output map wants. Measured against one SDPA call over all blocks (CPU, fp32): SDPA takes its
        unfused path for this float mask and these layouts, or the fused one after copying keys and values, both
        slower here. A map of a single block skips the zero-padded keys (see :meth:`_single_block`).
        """
        self._check_input(x)
        batch, _, height, width = x.shape
        d_qk, d_v, b = self.dim_head_qk, self.dim_head_v, self.block_size_ds
        n_h, n_w = height // self.block_size, width // self.block_size
        q = self._queries(x, self.scale)
        factor = 1.0 if self.scale_pos_embed else 1.0 / self.scale
        if n_h == n_w == 1 and self.halo_size > 0:
            out = self._single_block(q, x, factor)
        else:
            k, v = self._windows(x).split((d_qk, d_v), dim=1)
            attn = _add_scores(self._relative_bias(q, factor), q, k).softmax(dim=-1)
            out = torch.bmm(v, attn.transpose(1, 2))
        out = out.view(batch, self.num_heads, n_h, n_w, d_v, b, b).permute(0, 1, 4, 2, 5, 3, 6)
        return self.pool(out.reshape(batch, self.num_heads * d_v, n_h * b, n_w * b))
