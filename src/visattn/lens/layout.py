"""``TokenLayout``: where the queries and keys of one attention call lie on the feature map of their layer.

A ViT attends over one patch grid, so a query's row index is its position. Hierarchical and windowed models do
not: Swin and DaViT attend inside (shifted) windows, MaxViT inside blocks and dilated grids, HaloNet from query
blocks to larger key windows, NAT over the whole map with a neighborhood mask; the batch dim of a call is often
images x windows. The adapters describe each call with a :class:`TokenLayout`, so that the lens can put any
layer's attention back on the image:

- ``queries (W, Nq, 2)`` and ``keys (W, Nk, 2)``: the (row, column) of each grid token of each of the ``W``
  windows of one image (``W = 1`` for attention over the whole map), in the order of the call's query and key
  rows after the ``num_prefix_tokens`` prefix tokens. A key outside ``[0, H) x [0, W)`` (zero padding, a halo past
  the border) is marked ``-1`` in both coordinates: it takes part in the softmax but has no place on the map;
- ``grid``: ``(H, W)`` of the feature map the layer works on.

:func:`received_attention` and :func:`mean_distance` read an attention map through a layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TokenLayout:
    """Positions of the grid tokens of one attention call (see the module docstring)."""

    queries: Tensor
    keys: Tensor
    grid: tuple[int, int]
    num_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("queries", "keys"):
            positions = getattr(self, name)
            if positions.dim() != 3 or positions.shape[-1] != 2:
                raise ValueError(f"TokenLayout.{name} must be (windows, tokens, 2), got {tuple(positions.shape)}")
        if self.queries.shape[0] != self.keys.shape[0]:
            raise ValueError(f"TokenLayout.queries and keys must have the same number of windows, got "
                             f"{self.queries.shape[0]} and {self.keys.shape[0]}")

    @property
    def windows(self) -> int:
        """Windows per image (calls' batch dim = images x windows)."""
        return self.queries.shape[0]

    def key_inside(self) -> Tensor:
        """``(W, Nk)``: True where the key lies on the map."""
        return (self.keys >= 0).all(dim=-1)

    def query_inside(self) -> Tensor:
        """``(W, Nq)``: True where the query lies on the map (padding tokens are queries too, but of no pixel)."""
        return (self.queries >= 0).all(dim=-1)


def grid_positions(grid: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """``(H * W, 2)`` (row, column) of every token of ``grid`` in row-major order."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
    return torch.stack((rows, cols), dim=-1).reshape(-1, 2)


def grid_layout(grid: tuple[int, int], num_prefix_tokens: int = 0,
                device: torch.device | str | None = None) -> TokenLayout:
    """Attention over the whole map: one window, every token a query and a key."""
    positions = grid_positions(grid, device)[None]
    return TokenLayout(positions, positions, (int(grid[0]), int(grid[1])), num_prefix_tokens)


def partition_layout(partition: Callable[[Tensor], Tensor], grid: tuple[int, int],
                     device: torch.device | str | None = None, channels_first: bool = False) -> TokenLayout:
    """The layout of windows cut by ``partition``: a function from a channels-last map ``(1, H, W, C)`` to its
    windows ``(W, n, C)`` (or ``(W, h, w, C)``) that moves tokens without mixing them (roll, pad with zeros,
    reshape, permute); with ``channels_first``, from ``(1, C, H, W)`` to ``(W, C, h, w)``. It is run once on a map
    of coordinates; zero-padded tokens come out as ``-1``."""
    coordinates = grid_positions(grid, device).to(torch.float64).reshape(1, grid[0], grid[1], 2) + 1
    if channels_first:
        windows = partition(coordinates.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    else:
        windows = partition(coordinates)
    positions = windows.reshape(windows.shape[0], -1, 2).round().long() - 1
    positions = positions.masked_fill((positions < 0).any(dim=-1, keepdim=True), -1)
    return TokenLayout(positions, positions, (int(grid[0]), int(grid[1])))


class _Recorder(nn.Module):
    """Stands in for an attention module during a probe: records its input and returns it unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        self.seen.append(x)
        return x


PROBES = ("_attn", "_partition_attn", "_window_attention")
"""Block methods that cut windows from a channels-last map, call the attention child on them and merge them back
(timm's Swin V1/V2 blocks, timm's MaxViT ``PartitionAttentionCl``, L2ViT's local window block)."""


def probe_method(block: nn.Module | None) -> str | None:
    """The first method of :data:`PROBES` that ``block`` has, else None."""
    if block is None:
        return None
    return next((name for name in PROBES if callable(getattr(block, name, None))), None)


def probed_layout(block: nn.Module, method: str, child: str, grid: tuple[int, int],
                  channels_first: bool = False) -> TokenLayout:
    """The window layout of ``block.method`` on a ``grid`` map: the method runs once on a map of coordinates with
    the attention child ``child`` replaced by a recorder (the block's own roll, padding and partition decide);
    ``channels_first`` for blocks on ``(B, C, H, W)`` maps."""
    original = block._modules[child]
    recorder = _Recorder()
    block._modules[child] = recorder

    def windows(coordinates: Tensor) -> Tensor:
        getattr(block, method)(coordinates)
        if len(recorder.seen) != 1:
            raise ValueError(f"{type(block).__name__}.{method} called its attention {len(recorder.seen)} times on one "
                             f"map; the lens expects one call with all windows")
        return recorder.seen[0]

    try:
        with torch.no_grad():
            return partition_layout(windows, grid, next(iter(original.parameters()), torch.empty(0)).device,
                                    channels_first)
    finally:
        block._modules[child] = original


def _split(probs: Tensor, layout: TokenLayout) -> Tensor:
    """``probs (B * W, heads, P + Nq, P + Nk)`` as ``(B, W, heads, Nq, Nk)`` over the grid tokens."""
    prefix = layout.num_prefix_tokens
    windows, nq, nk = layout.windows, layout.queries.shape[1], layout.keys.shape[1]
    if probs.dim() != 4 or probs.shape[0] % windows or probs.shape[-2:] != (prefix + nq, prefix + nk):
        raise ValueError(f"probs must be (images x {windows} windows, heads, {prefix + nq}, {prefix + nk}) for this "
                         f"layout, got {tuple(probs.shape)}")
    grid_probs = probs[..., prefix:, prefix:]
    return grid_probs.reshape(probs.shape[0] // windows, windows, probs.shape[1], nq, nk)


def received_attention(probs: Tensor, layout: TokenLayout) -> Tensor:
    """``(B, heads, H, W)``: the attention each map position receives, averaged over the ``Q`` grid queries of the
    image that lie on the map, ``r(p) = (1 / Q) sum_{windows, queries q} A[q, k(p)]`` (keys off the map are left out,
    so a map sums to at most 1).
    """
    split = _split(probs, layout)
    images, _, heads = split.shape[:3]
    valid_queries = layout.query_inside().to(device=probs.device, dtype=probs.dtype)
    per_key = (split * valid_queries[None, :, None, :, None]).sum(dim=3)
    inside = layout.key_inside()
    index = (layout.keys[..., 0] * layout.grid[1] + layout.keys[..., 1]).clamp(min=0)
    per_key = per_key * inside[None, :, None].to(per_key.dtype)
    flat = per_key.permute(0, 2, 1, 3).reshape(images, heads, -1)
    target = torch.zeros(images, heads, layout.grid[0] * layout.grid[1], dtype=probs.dtype, device=probs.device)
    target.index_add_(2, index.reshape(-1).to(probs.device), flat)
    return (target / valid_queries.sum().clamp(min=1)).reshape(images, heads, *layout.grid)


def mean_distance(probs: Tensor, layout: TokenLayout, pixels_per_token: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """``(B, heads)``: mean attention distance ``(1 / Q) sum_q sum_k A[q, k] ||s * (p_q - p_k)||`` over the ``Q``
    grid queries of the image on the map and the keys on the map, ``s`` the pixels per map token per axis (mass on
    prefix keys and keys off the map counts as distance 0, as prefix keys do in
    :func:`~visattn.lens.metrics.mean_attention_distance`).
    """
    split = _split(probs, layout)
    scale = torch.tensor(pixels_per_token, dtype=torch.float64, device=probs.device)
    offsets = (layout.queries[:, :, None] - layout.keys[:, None]).to(device=probs.device, dtype=torch.float64)
    distance = (offsets * scale).norm(dim=-1) * layout.key_inside()[:, None].to(probs.device)
    per_query = (split.double() * distance[None, :, None]).sum(dim=-1)
    valid_queries = layout.query_inside().to(device=probs.device, dtype=torch.float64)
    total = (per_query * valid_queries[None, :, None]).sum(dim=(1, 3))
    return (total / valid_queries.sum().clamp(min=1)).to(probs.dtype)


def flatten_hidden(hidden: Tensor, grid: tuple[int, int] | None) -> Tensor:
    """A block input as tokens ``(B, N, C)``: sequences pass through; a map ``(B, H, W, C)`` or ``(B, C, H, W)`` is
    flattened row-major, its channel axis told apart by the layer's ``grid`` (channels-last when both fit)."""
    if hidden.dim() == 3:
        return hidden
    if hidden.dim() == 2:
        return hidden.unsqueeze(0)
    if hidden.dim() != 4:
        raise ValueError(f"a hidden state must be (B, N, C) or a map (B, H, W, C) / (B, C, H, W), got "
                         f"{tuple(hidden.shape)}")
    if grid is None or tuple(hidden.shape[1:3]) == tuple(grid):
        return hidden.flatten(1, 2)
    if tuple(hidden.shape[2:]) == tuple(grid):
        return hidden.flatten(2).transpose(1, 2)
    raise ValueError(f"a hidden map {tuple(hidden.shape)} matches the layer's grid {tuple(grid)} on neither layout "
                     f"(B, H, W, C) nor (B, C, H, W)")
