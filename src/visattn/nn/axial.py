"""Axial attention modules over N-D token grids ``(B, *grid, C)``, and MORPH's space-time form.

Papers: Ho et al., "Axial Attention in Multidimensional Transformers" (arXiv 1912.12180);
"MORPH: Shape-agnostic PDE Foundation Models" (arXiv 2509.21670). Attention along grid axis ``a`` lets a token
see the ``L_a`` tokens on its line along ``a`` (same coordinates on every other axis):

    ``A_a(x)_i = proj_a( concat_heads( sum_{j on the a-line of i} softmax_j(q_i . k_j * scale) v_j ) )``,
    ``q, k, v = qkv_a(x)``,

i.e. masked attention with :func:`visattn.masks.axial_mask` (``a``), computed without a mask by moving ``a``
last and running ``scaled_dot_product_attention`` over all lines at once. Each axis has its own projections
(as in MORPH, whose per-axis attentions are separate multi-head attentions with q, k, v and output
projections, biases included).

:class:`AxialAttention` sums the attentions along the chosen axes, each computed from the same input:
``out = sum_{a in axes} A_a(x)``. :class:`MorphAxialAttention` is MORPH's block
(``AxialAttention3DSpaceTime``) on ``(B, T, *space, C)``:

    ``x' = x + A_t(x)`` if ``T > 1`` (else ``x' = x``);   ``out = x' + A_D(x') + A_H(x') + A_W(x')``,

the spatial attentions computed in parallel from the same ``x'`` and summed. MORPH applies it after a LayerNorm
and adds the block's own residual outside; both stay outside this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import Tensor, nn

from .._checks import check_heads
from ..masks import full_mask
from ..ops import masked_attention


def _scale_or_alias(scale: float | None, qk_scale: float | None) -> float | None:
    """``scale``, or the deprecated ``qk_scale`` (the name before visattn settled on ``scale``) with a warning."""
    if qk_scale is None:
        return scale
    if scale is not None:
        raise TypeError(f"pass scale or its deprecated alias qk_scale, not both; got scale={scale!r}, "
                        f"qk_scale={qk_scale!r}")
    warnings.warn("qk_scale is deprecated, use scale", DeprecationWarning, stacklevel=3)
    return qk_scale


def _check_grid_input(x: Tensor, dim: int, min_grid_dims: int = 1) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 + min_grid_dims:
        raise ValueError(f"x must be shaped (B, *grid, C) with at least {min_grid_dims} grid axes, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ValueError(f"x has C={x.shape[-1]} channels, expected dim={dim}")


class LineAttention(nn.Module):
    """Multi-head self-attention along one axis of ``(B, *grid, C)``: one axial attention ``A_a`` with its own
    ``qkv`` and ``proj`` (see the module docstring).

    Args:
        dim: channels C, divisible by ``num_heads``.
        num_heads: attention heads.
        qkv_bias: bias in the qkv projection.
        proj_bias: bias in the output projection.
        scale: logit scale, ``head_dim ** -0.5`` by default (``qk_scale``: deprecated keyword alias).
        attn_drop: attention dropout (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0, *,
                 qk_scale: float | None = None) -> None:
        super().__init__()
        scale = _scale_or_alias(scale, qk_scale)
        check_heads(dim, num_heads)
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5 if scale is None else scale
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, axis: int) -> Tensor:
        """``x``: ``(B, *grid, C)``; ``axis``: the grid axis attended along (``0 <= axis < x.dim() - 2``)."""
        _check_grid_input(x, self.dim)
        if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < x.dim() - 2:
            raise ValueError(f"axis must be an int in [0, {x.dim() - 2}) for x of shape {tuple(x.shape)}, "
                             f"got {axis!r}")
        lines = x.movedim(1 + axis, -2)
        lead, length = lines.shape[:-2], lines.shape[-2]
        qkv = self.qkv(lines).reshape(-1, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout_p = self.attn_drop if self.training else 0.0
        out = masked_attention(qkv[0], qkv[1], qkv[2], full_mask(), (length,), scale=self.scale, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(*lead, length, self.dim)
        return self.proj_drop(self.proj(out)).movedim(-2, 1 + axis)


class AxialAttention(nn.Module):
    """Axial attention along each of ``axes`` of a ``(B, *grid, C)`` token grid, summed:
    ``out = sum_{a in axes} A_a(x)``, each ``A_a`` a :class:`LineAttention` with its own projections.

    Args:
        dim: channels C, divisible by ``num_heads``.
        num_heads: attention heads.
        axes: grid axes (an int or a sequence; negative axes count from the last grid axis), resolved against the
            input's grid at each call; they must name distinct axes.
        qkv_bias, proj_bias, scale, attn_drop, proj_drop: as in :class:`LineAttention` (``qk_scale``: deprecated
            keyword alias of ``scale``).
    """

    def __init__(self, dim: int, num_heads: int, axes: int | Sequence[int] = -1, qkv_bias: bool = True,
                 proj_bias: bool = True, scale: float | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, *, qk_scale: float | None = None) -> None:
        super().__init__()
        scale = _scale_or_alias(scale, qk_scale)
        check_heads(dim, num_heads)
        axes = (axes,) if isinstance(axes, int) and not isinstance(axes, bool) else axes
        if not isinstance(axes, Sequence) or isinstance(axes, str) or not axes or any(
                isinstance(a, bool) or not isinstance(a, int) for a in axes):
            raise TypeError(f"axes must be an int or a non-empty sequence of ints, got {axes!r}")
        self.dim = dim
        self.axes = tuple(axes)
        self.lines = nn.ModuleList(
            LineAttention(dim, num_heads, qkv_bias, proj_bias, scale, attn_drop, proj_drop) for _ in self.axes
        )

    def resolve_axes(self, grid_dims: int) -> tuple[int, ...]:
        """``axes`` as non-negative grid axes of a grid with ``grid_dims`` axes; ``ValueError`` if out of range or
        repeated."""
        resolved = []
        for a in self.axes:
            if not -grid_dims <= a < grid_dims:
                raise ValueError(f"axes must index the {grid_dims} grid axes (in [{-grid_dims}, {grid_dims})), "
                                 f"got axis {a} in axes={self.axes}")
            resolved.append(a % grid_dims)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"axes must name distinct grid axes, got axes={self.axes} on {grid_dims} grid axes")
        return tuple(resolved)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, *grid, C)``; returns the same shape."""
        _check_grid_input(x, self.dim)
        out = None
        for line, axis in zip(self.lines, self.resolve_axes(x.dim() - 2), strict=True):
            y = line(x, axis)
            out = y if out is None else out + y
        return out


class MorphAxialAttention(nn.Module):
    """MORPH's axial attention on ``(B, T, *space, C)``: time first (when ``T > 1``), then the spatial axes in
    parallel, with residuals: ``x' = x + A_t(x)``, ``out = x' + sum_a A_a(x')`` (see the module docstring).

    Args:
        dim: channels C, divisible by ``num_heads``.
        num_heads: attention heads.
        spatial_dims: spatial axes after time (MORPH uses 3: D, H, W, with size-1 axes for 1-D and 2-D data).
        qkv_bias, proj_bias, scale, attn_drop, proj_drop: as in :class:`LineAttention` (``qk_scale``: deprecated
            keyword alias of ``scale``).
    """

    def __init__(self, dim: int, num_heads: int, spatial_dims: int = 3, qkv_bias: bool = True,
                 proj_bias: bool = True, scale: float | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, *, qk_scale: float | None = None) -> None:
        super().__init__()
        scale = _scale_or_alias(scale, qk_scale)
        check_heads(dim, num_heads)
        if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims < 1:
            raise ValueError(f"spatial_dims must be an int >= 1, got {spatial_dims!r}")
        self.dim = dim
        self.spatial_dims = spatial_dims
        self.time = LineAttention(dim, num_heads, qkv_bias, proj_bias, scale, attn_drop, proj_drop)
        self.space = AxialAttention(dim, num_heads, tuple(range(1, spatial_dims + 1)), qkv_bias, proj_bias,
                                    scale, attn_drop, proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, T, *space, C)`` with ``spatial_dims`` spatial axes; returns the same shape."""
        _check_grid_input(x, self.dim)
        if x.dim() != self.spatial_dims + 3:
            raise ValueError(f"x must be shaped (B, T, {self.spatial_dims} spatial axes, C), "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] > 1:
            x = x + self.time(x, 0)
        return x + self.space(x)
