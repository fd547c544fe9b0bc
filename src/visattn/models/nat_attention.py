"""2-D (dilated) neighborhood attention with NAT's relative position bias inside the neighborhood.

Papers: Hassani et al., "Neighborhood Attention Transformer" (NAT, arXiv 2204.07143) and "Dilated Neighborhood
Attention Transformer" (DiNAT, arXiv 2209.15001). Every query ``i = (y, x)`` attends to the ``k x k`` keys of its
neighborhood ``N(i)`` (the window of its dilation group, shifted inward at the borders: NATTEN's semantics, see
:func:`visattn.masks.neighborhood_mask`), with a learned bias per head and relative offset (NAT eq. 2):

    ``NA(x_i) = softmax_{j in N(i)}(q_i . k_j * scale + B[h, (y_j - y_i) / d + k - 1, (x_j - x_i) / d + k - 1]) v_j``

with ``B`` the parameter ``rpb`` of shape ``(heads, 2k - 1, 2k - 1)`` and ``d`` the dilation. This is the bias that
the NATTEN kernels of 2022 (``natten2dqkrpb``) added and that the released NAT / DiNAT weights were trained with;
current NATTEN releases dropped it, and visattn's fused neighborhood kernels carry no additive bias either, so the
fast path here is its own: query tiles of ``t x t`` tokens of one dilation group, each attending to the
``(t + k - 1)^2`` keys that cover all their neighborhoods, in one batched SDPA call whose float mask holds the bias
where a key is in the query's neighborhood and ``-inf`` elsewhere. Exact (every query sees exactly its ``k^2`` keys
with their bias), batched over images, heads and tiles; about ``(t + k - 1)^2 / k^2`` times the necessary score
work (3.4x at ``t = 7``) instead of the ``N / k^2`` of a dense masked map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._cache import byte_cached
from .._checks import per_axis

DEFAULT_TILE = 7
"""Query tile side per axis (clamped to the dilation group's length). On a loaded 2-core CPU, k = 7, forward and
backward at 56, 28 and 14 tokens a side: 7 and 8 close, 4 and 14 slower; 7 tiles NAT's 56 / 28 / 14 / 7 maps exactly."""


@dataclass(frozen=True)
class AxisPlan:
    """Index plan of one spatial axis: ``n`` query tiles of ``t`` queries, each seeing a region of ``r`` keys.

    ``query_index (n, t)`` and ``key_index (n, r)`` are positions on the axis; ``allowed (n, t, r)`` says the key
    is in the query's neighborhood, ``relative (n, t, r)`` is its bias row ``(key - query) / d + k - 1`` (clamped
    into the table where not allowed); ``output_index (L,)`` picks, for each position, its row in the
    ``(n * t)`` tiled output (tiles may overlap at group ends; each position is read from exactly one tile).
    """

    query_index: Tensor
    key_index: Tensor
    allowed: Tensor
    relative: Tensor
    output_index: Tensor


def axis_plan(length: int, kernel_size: int, dilation: int, tile: int, device: torch.device) -> AxisPlan:
    """Tile one axis of ``length`` positions for neighborhood attention (see :class:`AxisPlan`).

    Requires ``kernel_size * dilation <= length`` (every dilation group holds at least ``kernel_size`` positions).
    """
    short, long = length // dilation, -(-length // dilation)
    t = min(tile, short)
    r = min(t + kernel_size - 1, long)
    n = -(-long // t)
    group = torch.arange(dilation, device=device)
    group_len = short + (group < length % dilation).long()
    starts = torch.minimum(torch.arange(n, device=device)[None] * t, (group_len - t)[:, None])
    rows = starts[..., None] + torch.arange(t, device=device)
    window = torch.minimum((rows - kernel_size // 2).clamp(min=0), (group_len - kernel_size)[:, None, None])
    region = torch.minimum(window[..., 0], (group_len - r).clamp(min=0)[:, None])
    keys = region[..., None] + torch.arange(r, device=device)
    inside = keys[..., None, :] - window[..., None]
    allowed = (inside >= 0) & (inside < kernel_size)
    relative = (keys[..., None, :] - rows[..., None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    keys = torch.minimum(keys, (group_len - 1)[:, None, None])
    position = torch.arange(length, device=device)
    pos_group, local = position % dilation, position // dilation
    tile_of = torch.minimum(local // t, -(-group_len[pos_group] // t) - 1)
    output_index = (pos_group * n + tile_of) * t + local - starts[pos_group, tile_of]
    return AxisPlan(
        query_index=(rows * dilation + group[:, None, None]).reshape(-1, t),
        key_index=(keys * dilation + group[:, None, None]).reshape(-1, r),
        allowed=allowed.reshape(-1, t, r),
        relative=relative.reshape(-1, t, r),
        output_index=output_index,
    )


@dataclass(frozen=True, eq=False)
class TilePlan:
    """Row plan of a 2-D map for ``heads`` heads: ``tiles`` query tiles of ``t`` tokens, each with ``r`` keys.

    The sources are ``(B, rows, head_dim)`` tensors whose rows are (token, head) pairs: ``q_rows``, ``k_rows``,
    ``v_rows`` ``(heads * tiles * t)`` / ``(heads * tiles * r)`` pick, in one gather each, the ``(B, heads * tiles,
    t or r, head_dim)`` layout of the batched attention; ``out_rows`` gathers its output back to one row per
    (token, head) in the source order. ``bias_index (tiles * t * r,)`` indexes a head's flattened
    ``(2k_h - 1) (2k_w - 1)`` bias table; ``blocked`` is True where the key is outside the query's neighborhood.
    Source layouts: ``"qkv"``, one ``(B, N * 3 * heads, head_dim)`` view of a fused ``qkv`` projection
    ``(B, N, 3, heads, head_dim)`` (output ``(B, N * heads, head_dim)``); ``"bhnd"``, each of q, k, v as
    ``(B, heads * N, head_dim)`` (output the same).
    """

    tiles: int
    queries_per_tile: int
    keys_per_tile: int
    q_rows: Tensor
    k_rows: Tensor
    v_rows: Tensor
    out_rows: Tensor
    bias_index: Tensor
    blocked: Tensor


def build_tile_plan(shape: tuple[int, int], kernel_size: tuple[int, int], dilation: tuple[int, int], tile: int,
                    heads: int, layout: str, device: torch.device) -> TilePlan:
    """The :class:`TilePlan` of a ``shape`` map: the product of the two axes' :class:`AxisPlan`."""
    py = axis_plan(shape[0], kernel_size[0], dilation[0], tile, device)
    px = axis_plan(shape[1], kernel_size[1], dilation[1], tile, device)
    (ny, ty), (nx, tx) = py.query_index.shape, px.query_index.shape
    ry, rx = py.key_index.shape[1], px.key_index.shape[1]
    tiles, t, r = ny * nx, ty * tx, ry * rx
    query_index = (py.query_index[:, None, :, None] * shape[1] + px.query_index[None, :, None, :]).reshape(-1)
    key_index = (py.key_index[:, None, :, None] * shape[1] + px.key_index[None, :, None, :]).reshape(-1)
    bias_index = (py.relative[:, None, :, None, :, None] * (2 * kernel_size[1] - 1)
                  + px.relative[None, :, None, :, None, :])
    allowed = py.allowed[:, None, :, None, :, None] & px.allowed[None, :, None, :, None, :]
    oy, ox = py.output_index, px.output_index
    output_index = ((oy // ty * nx)[:, None] + (ox // tx)[None, :]) * t + (oy % ty * tx)[:, None] + (ox % tx)[None, :]
    head = torch.arange(heads, device=device)[:, None]
    output_rows = head * (tiles * t) + output_index.reshape(1, -1)
    tokens = shape[0] * shape[1]
    if layout == "qkv":
        q_rows, k_rows, v_rows = ((index[None] * 3 + part) * heads + head for part, index in
                                  ((0, query_index), (1, key_index), (2, key_index)))
        out_rows = output_rows.t()
    elif layout == "bhnd":
        q_rows, k_rows = head * tokens + query_index[None], head * tokens + key_index[None]
        v_rows, out_rows = k_rows, output_rows
    else:
        raise ValueError(f"layout must be 'qkv' or 'bhnd', got {layout!r}")
    return TilePlan(tiles=tiles, queries_per_tile=t, keys_per_tile=r, q_rows=q_rows.reshape(-1),
                    k_rows=k_rows.reshape(-1), v_rows=v_rows.reshape(-1), out_rows=out_rows.reshape(-1),
                    bias_index=bias_index.reshape(-1), blocked=~allowed.reshape(1, -1))


_cached_tile_plan = byte_cached(build_tile_plan)
"""Plans hold device index tensors: kept in visattn's shared byte-bounded cache (``visattn.clear_caches()``)."""


def tile_plan(shape: tuple[int, int], kernel_size: tuple[int, int], dilation: tuple[int, int], tile: int,
              heads: int, layout: str, device: torch.device) -> TilePlan:
    """:func:`build_tile_plan`, cached per arguments in eager mode (rebuilt, from index arithmetic, when traced).

    Cached plans are built outside inference mode, so a plan first made under ``torch.inference_mode`` serves
    training later.
    """
    if torch.compiler.is_compiling() or device.type == "meta":
        return build_tile_plan(shape, kernel_size, dilation, tile, heads, layout, device)
    with torch.inference_mode(False), torch.no_grad():
        return _cached_tile_plan(shape, kernel_size, dilation, tile, heads, layout, device)


def _check_call(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor, shape: tuple[int, int], kernel_size: tuple[int, int],
                dilation: tuple[int, int]) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be (B, heads, N, head_dim) with equal B, heads, N; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2] != shape[0] * shape[1]:
        raise ValueError(f"shape={shape} holds {shape[0] * shape[1]} tokens but q has N={q.shape[2]}")
    expected = (q.shape[1], 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1)
    if tuple(rpb.shape) != expected:
        raise ValueError(f"rpb must be (heads, 2k - 1, 2k - 1)={expected}, got {tuple(rpb.shape)}")
    for axis in range(2):
        if kernel_size[axis] % 2 == 0:
            raise ValueError(f"kernel_size must be odd with a relative position bias, got {kernel_size}")
        if kernel_size[axis] * dilation[axis] > shape[axis]:
            raise ValueError(f"kernel_size * dilation must be <= the map size on every axis, got kernel_size="
                             f"{kernel_size}, dilation={dilation}, shape={shape} (pad the map first)")


def neighborhood_attention_rpb(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor, shape: tuple[int, int], *,
                               kernel_size: int | tuple[int, int], dilation: int | tuple[int, int] = 1,
                               scale: float | None = None, dropout_p: float = 0.0, tile: int = DEFAULT_TILE) -> Tensor:
    """Neighborhood attention with a relative position bias, ``(B, heads, H*W, d)`` tokens in row-major order.

    ``out_i = sum_{j in N(i)} softmax_j(q_i . k_j * scale + rpb[h, dy_ij + k - 1, dx_ij + k - 1]) v_j`` (NAT eq. 2,
    offsets ``dy, dx`` counted in dilated steps). ``rpb``: ``(heads, 2k_h - 1, 2k_w - 1)``; kernel sizes odd;
    ``kernel_size * dilation <= shape`` per axis. Gradients reach ``q``, ``k``, ``v`` and ``rpb``.
    """
    kernel = per_axis(kernel_size, 2, "kernel_size")
    dil = per_axis(dilation, 2, "dilation")
    shape = per_axis(shape, 2, "shape")
    _check_call(q, k, v, rpb, shape, kernel, dil)
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be an int >= 1, got {tile!r}")
    batch, heads, tokens, head_dim = q.shape
    plan = tile_plan(shape, kernel, dil, tile, heads, "bhnd", q.device)
    out = tiled_attention(q.reshape(batch, heads * tokens, head_dim), k.reshape(batch, heads * tokens, head_dim),
                          v.reshape(batch, heads * tokens, v.shape[-1]), rpb_bias(rpb, plan, q.dtype), plan,
                          head_dim ** -0.5 if scale is None else scale, dropout_p)
    return out.reshape(batch, heads, tokens, -1)


def rpb_bias(rpb: Tensor, plan: TilePlan, dtype: torch.dtype) -> Tensor:
    """The float mask ``(1, heads * tiles, t, r)`` of a plan: ``rpb`` at each allowed pair, ``-inf`` elsewhere."""
    heads = rpb.shape[0]
    bias = rpb.to(dtype).reshape(heads, -1)[:, plan.bias_index].masked_fill(plan.blocked, float("-inf"))
    return bias.reshape(1, heads * plan.tiles, plan.queries_per_tile, plan.keys_per_tile)


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, plan: TilePlan, scale: float,
                    dropout_p: float = 0.0) -> Tensor:
    """The tiled core: ``q, k, v`` are ``(B, rows, d)`` sources in the plan's layout (the same tensor for a fused
    ``qkv``), ``bias`` from :func:`rpb_bias`; returns ``(B, rows_out, d_v)`` in the layout's output order."""
    batch = q.shape[0]
    groups = bias.shape[1]
    out = F.scaled_dot_product_attention(
        q.index_select(1, plan.q_rows).reshape(batch, groups, plan.queries_per_tile, q.shape[-1]),
        k.index_select(1, plan.k_rows).reshape(batch, groups, plan.keys_per_tile, k.shape[-1]),
        v.index_select(1, plan.v_rows).reshape(batch, groups, plan.keys_per_tile, v.shape[-1]),
        attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return out.reshape(batch, -1, out.shape[-1]).index_select(1, plan.out_rows)


class NeighborhoodAttention2dRPB(nn.Module):
    """NAT's neighborhood attention layer over ``(B, H, W, dim)``: ``proj(NA(qkv(x)))`` with ``rpb``.

    Parameter names and shapes are those of the NAT / DiNAT checkpoints (``qkv``, ``rpb``, ``proj``). Maps smaller
    than ``kernel_size * dilation`` on an axis are zero-padded at the bottom / right up to it before ``qkv`` and
    cropped after the attention (the rule of the official NAT code), so any map of at least one token runs.

    Args:
        dim: channels; divisible by ``num_heads``.
        num_heads: attention heads.
        kernel_size: odd neighborhood side.
        dilation: neighborhood dilation (DiNAT).
        qkv_bias: bias in ``qkv``.
        qk_scale: logit scale, ``head_dim ** -0.5`` by default.
        attn_drop: attention dropout (training only).
        proj_drop: dropout after ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads), ("kernel_size", kernel_size),
                            ("dilation", dilation)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop!r}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.kernel_size, self.dilation = kernel_size, dilation
        self.scale = self.head_dim ** -0.5 if qk_scale is None else qk_scale
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._bias_cache: dict[tuple[int, torch.dtype], tuple[tuple[int, int], Tensor, TilePlan]] = {}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}"

    def _bias(self, plan: TilePlan, dtype: torch.dtype) -> Tensor:
        """:func:`rpb_bias`, kept between calls while ``rpb`` is unchanged and needs no gradient (inference)."""
        if (torch.is_grad_enabled() and self.rpb.requires_grad) or torch.compiler.is_compiling() \
                or self.rpb.device.type == "meta":
            return rpb_bias(self.rpb, plan, dtype)
        key = (id(plan), dtype)
        version = (self.rpb._version, self.rpb.data_ptr())
        cached = self._bias_cache.get(key)
        if cached is None or cached[0] != version:
            if len(self._bias_cache) >= 8:
                self._bias_cache.clear()
            with torch.inference_mode(False), torch.no_grad():
                cached = self._bias_cache[key] = (version, rpb_bias(self.rpb, plan, dtype), plan)
        return cached[1]

    def pad(self, x: Tensor) -> Tensor:
        """``x`` ``(B, H, W, dim)`` checked, and zero-padded at the bottom / right up to ``kernel_size * dilation``
        on an axis where it is smaller (the outputs there are cropped)."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be shaped (B, H, W, dim={self.dim}), got {tuple(x.shape)}")
        window = self.kernel_size * self.dilation
        pad_h, pad_w = max(0, window - int(x.shape[1])), max(0, window - int(x.shape[2]))
        return F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, H, W, dim)``; returns the same shape."""
        height, width = int(x.shape[1]), int(x.shape[2])
        x = self.pad(x)
        batch, hp, wp, _ = x.shape
        rows = self.qkv(x).reshape(batch, hp * wp * 3 * self.num_heads, self.head_dim)
        plan = tile_plan((hp, wp), (self.kernel_size,) * 2, (self.dilation,) * 2, DEFAULT_TILE, self.num_heads, "qkv",
                         x.device)
        out = tiled_attention(rows, rows, rows, self._bias(plan, x.dtype), plan, self.scale,
                              self.attn_drop if self.training else 0.0).reshape(batch, hp, wp, self.dim)
        if (hp, wp) != (height, width):
            out = out[:, :height, :width]
        return self.proj_drop(self.proj(out))
