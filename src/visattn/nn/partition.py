"""MaxViT's partition attention (block and grid) with relative position bias, channels-last.

Paper: Tu et al., "MaxViT: Multi-Axis Vision Transformer" (arXiv 2204.01697). Block attention partitions an
``(H, W)`` map into ``P x P`` windows; grid attention gathers a ``G x G`` grid of tokens spaced ``(H/G, W/G)``
apart. Inside each partition, with ``(i, j)`` / ``(x, y)`` the query / key coordinates in the partition,

    ``out_q = sum_k softmax_k(q . k / sqrt(d) + T[head, x - i + P - 1, y - j + P - 1]) v_k``

As a mask over the whole map this is ``window_mask(P)`` / ``grid_mask(G)`` with the bias as a score
modification; the fast path partitions the tokens and runs one batched SDPA with the bias as a float mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import per_axis
from ..masks import GridMask, WindowMask, grid_mask, materialize, window_mask
from ..ops import reference
from .relative_position import RelativePositionBias

PARTITION_TYPES = ("block", "grid")
PARTITION_BACKENDS = ("fast", "reference")


def _check_partition_type(partition_type: str) -> None:
    if partition_type not in PARTITION_TYPES:
        raise ValueError(f"partition_type must be one of {PARTITION_TYPES}, got {partition_type!r}")


def _split_axes(shape: tuple[int, int], partition_type: str, partition_size: tuple[int, int]) -> tuple[int, ...]:
    """``(H, W)`` viewed as ``(H1, H2, W1, W2)``; the partition is ``(H2, W2)`` for block, ``(H1, W1)`` for grid."""
    (h, w), (ph, pw) = shape, partition_size
    if partition_type == "block":
        return h // ph, ph, w // pw, pw
    return ph, h // ph, pw, w // pw


def partition(x: Tensor, partition_type: str, partition_size: tuple[int, int]) -> Tensor:
    """Partition a channels-last map ``(B, H, W, C)`` into ``(B * windows, P_h * P_w, C)``, windows row-major.

    ``"block"``: window ``(a, c)`` holds the tokens ``(a P_h + i, c P_w + j)``. ``"grid"``: partition ``(a, c)``
    holds the tokens ``(i H / P_h + a, j W / P_w + c)``. In both, ``(i, j)`` is the token's partition coordinate.
    """
    _check_partition_type(partition_type)
    b, h, w, c = x.shape
    h1, h2, w1, w2 = _split_axes((h, w), partition_type, partition_size)
    x = x.reshape(b, h1, h2, w1, w2, c)
    order = (0, 1, 3, 2, 4, 5) if partition_type == "block" else (0, 2, 4, 1, 3, 5)
    return x.permute(order).reshape(-1, partition_size[0] * partition_size[1], c)


def merge_partitions(windows: Tensor, partition_type: str, partition_size: tuple[int, int],
                     shape: tuple[int, int]) -> Tensor:
    """Inverse of :func:`partition`: ``(B * windows, P_h * P_w, C)`` back to ``(B, H, W, C)``."""
    _check_partition_type(partition_type)
    h1, h2, w1, w2 = _split_axes(shape, partition_type, partition_size)
    c = windows.shape[-1]
    if partition_type == "block":
        x = windows.reshape(-1, h1, w1, h2, w2, c).permute(0, 1, 3, 2, 4, 5)
    else:
        x = windows.reshape(-1, h2, w2, h1, w1, c).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, shape[0], shape[1], c)


def partition_coordinates(shape: tuple[int, int], partition_type: str, partition_size: tuple[int, int],
                          device: torch.device | None = None) -> Tensor:
    """Each token's coordinate inside its partition, ``(H * W, 2)`` in row-major token order."""
    _check_partition_type(partition_type)
    rows = torch.arange(shape[0], device=device)
    cols = torch.arange(shape[1], device=device)
    if partition_type == "block":
        rows, cols = rows % partition_size[0], cols % partition_size[1]
    else:
        rows, cols = rows // (shape[0] // partition_size[0]), cols // (shape[1] // partition_size[1])
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([grid_rows.flatten(), grid_cols.flatten()], dim=-1)


class PartitionAttention(nn.Module):
    """MaxViT block or grid attention on a channels-last map ``(B, H, W, C)``, returning the same shape.

    The attention part of timm's ``PartitionAttentionCl`` (``AttentionCl`` with ``RelPosBiasTf``): parameters
    ``qkv``, ``rel_pos.relative_position_bias_table`` and ``proj`` have timm's names and layouts, so its state
    dict loads unchanged. Heads: ``dim // dim_head``.

    Padding: ``H`` and ``W`` must be divisible by the partition size unless ``pad=True``. Then the map is
    zero-padded at the bottom and right to the next multiple, the padded tokens are excluded as keys (masked out
    of every softmax, so the result does not depend on the padding value or the ``qkv`` bias), their outputs are
    cropped, and partitions and partition coordinates are those of the padded map.

    Args:
        dim: channels ``C``.
        partition_type: ``"block"`` (window partition, ``window_mask(P)``) or ``"grid"`` (``grid_mask(G)``).
        partition_size: ``P`` (block) or ``G`` (grid), an int or ``(P_h, P_w)``.
        dim_head: channels per head.
        qkv_bias: bias in the ``qkv`` and ``proj`` linear layers (timm's ``attn_bias``).
        head_first: ``qkv`` output channels ordered per head ``[q_h, k_h, v_h]`` (timm's ``head_first=True``)
            instead of ``[q, k, v]`` each over all heads (``False``, TensorFlow MaxViT and timm's ``*_tf`` models).
        attn_drop: attention dropout probability (fast path only).
        proj_drop: dropout after ``proj``.
        pad: pad maps whose sides are not divisible by the partition size (see above) instead of raising.
        backend: ``"fast"`` (partition + one batched SDPA) or ``"reference"`` (the dense definition over the
            whole map: the materialised mask, the bias at partition coordinates and naive attention).
    """

    def __init__(self, dim: int, partition_type: str = "block", partition_size: int | tuple[int, int] = 7,
                 dim_head: int = 32, qkv_bias: bool = True, head_first: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, pad: bool = False, backend: str = "fast") -> None:
        super().__init__()
        _check_partition_type(partition_type)
        if backend not in PARTITION_BACKENDS:
            raise ValueError(f"backend must be one of {PARTITION_BACKENDS}, got {backend!r}")
        for name, value in (("dim", dim), ("dim_head", dim_head)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % dim_head:
            raise ValueError(f"dim must be divisible by dim_head, got dim={dim}, dim_head={dim_head}")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop!r}")
        self.dim = dim
        self.partition_type = partition_type
        self.partition_size = per_axis(partition_size, 2, "partition_size")
        self.dim_head = dim_head
        self.num_heads = dim // dim_head
        self.scale = dim_head**-0.5
        self.head_first = head_first
        self.attn_drop = attn_drop
        self.pad = pad
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rel_pos = RelativePositionBias(self.partition_size, self.num_heads)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def mask(self) -> WindowMask | GridMask:
        """The structure as a :class:`visattn.masks.Mask` over the (padded) map."""
        return window_mask(self.partition_size) if self.partition_type == "block" else grid_mask(self.partition_size)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, partition_type={self.partition_type!r}, partition_size={self.partition_size}, "
                f"num_heads={self.num_heads}, head_first={self.head_first}, pad={self.pad}, backend={self.backend!r}")

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        self._check_input(x)
        _, h, w, _ = x.shape
        x, valid = self._pad(x)
        out = self._fast(x, valid) if self.backend == "fast" else self._reference(self.qkv(x), valid)
        return self.proj_drop(self.proj(out[:, :h, :w]))

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be channels-last (B, H, W, C={self.dim}), got shape {tuple(x.shape)}")
        if not self.pad:
            (ph, pw), (h, w) = self.partition_size, x.shape[1:3]
            if h % ph or w % pw:
                raise ValueError(
                    f"x's (H, W)=({h}, {w}) must be divisible by partition_size={self.partition_size} "
                    f"for {self.partition_type} attention; pass pad=True to pad"
                )

    def _pad(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Zero-pad to a multiple of the partition size; return the map and the ``(H', W')`` real-token flags."""
        (ph, pw), (h, w) = self.partition_size, x.shape[1:3]
        pad_h, pad_w = -h % ph, -w % pw
        if not (pad_h or pad_w):
            return x, None
        valid = torch.zeros(h + pad_h, w + pad_w, dtype=torch.bool, device=x.device)
        valid[:h, :w] = True
        return F.pad(x, (0, 0, 0, pad_w, 0, pad_h)), valid

    def _split_heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(..., L, 3C)`` -> q, k, v each ``(..., heads, L, dim_head)`` in the configured channel order."""
        lead, length = qkv.shape[:-2], qkv.shape[-2]
        if self.head_first:
            per_head = qkv.reshape(*lead, length, self.num_heads, 3, self.dim_head).movedim(-3, -4)
            return per_head.unbind(-2)
        split = qkv.reshape(*lead, length, 3, self.num_heads, self.dim_head).movedim(-4, -2)
        return split.unbind(-4)

    def _fast(self, x: Tensor, valid: Tensor | None) -> Tensor:
        # Partition the C input channels, not the 3C of qkv: the projection is per token, so it commutes with
        # the partition, and the copy is a third of the size.
        batch, height, width, _ = x.shape
        windows = self.qkv(partition(x, self.partition_type, self.partition_size))
        # A 4-D mask keeps SDPA on its fused CPU kernel; a 3-D one falls back to the math path (about 10x slower).
        bias = self.rel_pos().to(x.dtype)[None]
        if valid is not None:
            length = windows.shape[1]
            key_valid = partition(valid[None, :, :, None], self.partition_type, self.partition_size)
            bias = bias.masked_fill(~key_valid.reshape(-1, 1, 1, length), float("-inf"))
            bias = bias.expand(batch, -1, -1, -1, -1).reshape(-1, self.num_heads, length, length)
        q, k, v = self._split_heads(windows)
        dropout_p = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=self.scale)
        out = out.transpose(-3, -2).reshape(-1, out.shape[-2], self.dim)
        return merge_partitions(out, self.partition_type, self.partition_size, (height, width))

    def _reference(self, qkv: Tensor, valid: Tensor | None) -> Tensor:
        if self.training and self.attn_drop:
            raise ValueError(f"backend='reference' applies no attention dropout; got attn_drop={self.attn_drop} "
                             "in training mode (call .eval() or use backend='fast')")
        batch, height, width, _ = qkv.shape
        q, k, v = self._split_heads(qkv.reshape(batch, height * width, -1))
        allowed = materialize(self.mask, (height, width), device=qkv.device)
        if valid is not None:
            allowed = allowed & valid.flatten()[None, :]
        coords = partition_coordinates((height, width), self.partition_type, self.partition_size, qkv.device)
        bias = self.rel_pos.bias_between(coords, coords).to(qkv.dtype).masked_fill(~allowed, float("-inf"))
        out = reference.attention(q, k, v, mask=bias, scale=self.scale)
        return out.transpose(1, 2).reshape(batch, height, width, self.dim)
