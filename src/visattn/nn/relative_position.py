"""Learned relative position terms added to attention logits: MaxViT's bias table and HaloNet's factorised logits.

- :class:`RelativePositionBias`: Tu et al., "MaxViT: Multi-Axis Vision Transformer" (arXiv 2204.01697). A table
  ``T`` of shape ``[heads, 2P_h - 1, 2P_w - 1]``; a query at partition coordinates ``(i, j)`` and a key at
  ``(x, y)`` get the bias ``T[head, x - i + P_h - 1, y - j + P_w - 1]``. Same parameter name, shape and indexing as
  timm's ``RelPosBiasTf`` (the TensorFlow MaxViT layout), so its state dict loads unchanged.
- :class:`FactorizedRelativeLogits`: Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual
  Backbones" (HaloNet, arXiv 2103.12731), after Bello et al. (arXiv 1904.09925). Two tables ``R_h, R_w`` of shape
  ``(2w - 1, d_head)`` with ``w = b + 2h`` the key window; a query at block coordinates ``(i, j)`` and a key at
  window coordinates ``(x, y)`` get the logit ``q . R_h[x - i + w - 1] + q . R_w[y - j + w - 1]``. Same parameter
  names as timm's ``PosEmbedRel`` (``height_rel``, ``width_rel``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import per_axis


def _check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


class RelativePositionBias(nn.Module):
    """MaxViT's relative position bias over a ``P_h x P_w`` partition, one learned table per head.

    ``B[head, (i, j), (x, y)] = T[head, x - i + P_h - 1, y - j + P_w - 1]`` (key minus query offset), with
    ``T`` the parameter ``relative_position_bias_table`` of shape ``[heads, 2P_h - 1, 2P_w - 1]``, initialised
    from N(0, 0.02^2) like timm's ``RelPosBiasTf``.

    Args:
        partition_size: ``P`` or ``(P_h, P_w)``.
        num_heads: attention heads, one table each.
    """

    def __init__(self, partition_size: int | tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.partition_size = per_axis(partition_size, 2, "partition_size")
        self.num_heads = _check_positive(num_heads, "num_heads")
        ph, pw = self.partition_size
        self.relative_position_bias_table = nn.Parameter(torch.empty(num_heads, 2 * ph - 1, 2 * pw - 1))
        rows, cols = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij")
        self.register_buffer("coords", torch.stack([rows.flatten(), cols.flatten()], dim=-1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.relative_position_bias_table, std=0.02)

    def extra_repr(self) -> str:
        return f"partition_size={self.partition_size}, num_heads={self.num_heads}"

    def bias_between(self, query_coords: Tensor, key_coords: Tensor) -> Tensor:
        """Bias ``(heads, Nq, Nk)`` for queries and keys at integer partition coordinates ``(Nq, 2)``, ``(Nk, 2)``.

        Every coordinate must lie in ``[0, P_h) x [0, P_w)``.
        """
        ph, pw = self.partition_size
        dr = key_coords[None, :, 0] - query_coords[:, None, 0] + ph - 1
        dc = key_coords[None, :, 1] - query_coords[:, None, 1] + pw - 1
        return self.relative_position_bias_table[:, dr, dc]

    def forward(self) -> Tensor:
        """The bias ``(heads, P_h P_w, P_h P_w)`` between all tokens of one partition, row-major."""
        return self.bias_between(self.coords, self.coords)


class FactorizedRelativeLogits(nn.Module):
    """HaloNet's relative logits, factorised into a height table and a width table.

    For a query ``q`` at ``(i, j)`` in a ``block_size x block_size`` query block and a key at ``(x, y)`` in the
    ``window_size x window_size`` key window: ``r = q . R_h[x - i + w - 1] + q . R_w[y - j + w - 1]``, with
    ``R_h`` = ``height_rel`` and ``R_w`` = ``width_rel`` of shape ``(2w - 1, dim_head)``. Indices count from the
    window's first key, so ``x - i`` is the key-query offset plus the halo (as in timm's ``PosEmbedRel``).

    Args:
        block_size: query block side ``b`` (after any query stride).
        window_size: key window side ``w`` (``b + 2h`` in HaloNet); must be >= ``block_size``.
        dim_head: query head dimension.
        scale: standard deviation of the normal initialisation.
    """

    def __init__(self, block_size: int, window_size: int, dim_head: int, scale: float = 1.0) -> None:
        super().__init__()
        self.block_size = _check_positive(block_size, "block_size")
        self.window_size = _check_positive(window_size, "window_size")
        self.dim_head = _check_positive(dim_head, "dim_head")
        if window_size < block_size:
            raise ValueError(f"window_size must be >= block_size={block_size}, got window_size={window_size}")
        self.scale = scale
        self.height_rel = nn.Parameter(torch.empty(2 * window_size - 1, dim_head))
        self.width_rel = nn.Parameter(torch.empty(2 * window_size - 1, dim_head))
        offsets = torch.arange(window_size)[None, :] - torch.arange(block_size)[:, None] + window_size - 1
        self.register_buffer("offsets", offsets, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.height_rel, std=self.scale)
        nn.init.normal_(self.width_rel, std=self.scale)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, window_size={self.window_size}, dim_head={self.dim_head}"

    def forward(self, q: Tensor) -> Tensor:
        """Logits ``(..., b^2, w^2)`` for queries ``(..., b^2, dim_head)`` laid out row-major in their block."""
        b, w = self.block_size, self.window_size
        if q.shape[-2:] != (b * b, self.dim_head):
            raise ValueError(f"q must end in (block_size^2, dim_head)=({b * b}, {self.dim_head}), got {tuple(q.shape)}")
        q = q.unflatten(-2, (b, b))
        height = torch.einsum("...ijd,ixd->...ijx", q, self.height_rel[self.offsets])
        width = torch.einsum("...ijd,jyd->...ijy", q, self.width_rel[self.offsets])
        logits = height[..., :, None] + width[..., None, :]
        return logits.reshape(*q.shape[:-3], b * b, w * w)
