"""InLine: injective linear attention with a dynamic local residual.

Paper: Han et al., "Bridging the Divide: Reconsidering Softmax and Linear Attention" (arXiv 2412.06590), Eq. 5.
Plain linear attention normalises ``phi(q_i) . phi(k_j)`` by its row sum, which maps queries that differ only in
scale to the same weights (not injective). InLine subtracts the row mean instead, so every row still sums to 1:

    InL_ij = phi(q_i)^T phi(k_j) s / N - (1 / N) sum_s phi(q_i)^T phi(k_s) s / N + 1 / N,   s = d^-1/2,

(the paper folds ``s / N`` into ``phi``; weights may be negative) and the output is computed in O(N d^2) as

    y_i = phi(q_i) (phi(K)^T V) s / N + (1 - s phi(q_i) . mean_j phi(k_j)) mean_j v_j.

``phi`` is the identity by default (options ``"relu"``, ``"leakyrelu"`` (slope 0.01), ``"exp"`` = ``exp(0.2 x)``,
as in the released code). ``N`` counts every token, prefix tokens included (released DeiT code).

Local residual (Sec. 5): a 3 x 3 depthwise convolution of ``v`` on the 2-D token grid whose kernels are predicted
per image from the token mean of the layer input ``x``:
``Conv1d(C, C, 1, groups=heads) -> GELU -> Conv1d(C, 9 C, 1, groups=heads)`` (channel ``c`` gets kernel entries
``9c .. 9c + 8``). It is added to the grid tokens only (prefix tokens get none, as in the released DeiT code).
The module names (``residual.0``, ``residual.2``) match the released code, so its weights load into ``residual``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import as_shape
from ..ops.inline_attention import INLINE_KERNELS, inline_attention, inline_state_bytes, inline_weights
from ..ops.recurrent_state import layout
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["InLineMixer"]


class InLineMixer(TokenMixer):
    """InLine attention (Han et al., arXiv 2412.06590) with the dynamic 3 x 3 local residual on ``v``.

    Args:
        dim: channels C of the layer input ``x`` (the residual kernels are predicted from its token mean).
        num_heads, head_dim: layout of q, k, v; ``dim`` must be divisible by ``num_heads``.
        kernel: ``phi``, one of :data:`INLINE_KERNELS`.
        local_residual: add the dynamic depthwise residual (needs ``x=`` and a 2-D ``shape``).
    """

    uses_input = True
    uses_attn_drop = False

    def __init__(self, dim: int = 512, num_heads: int = 8, head_dim: int = 64, kernel: str = "identity",
                 local_residual: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        for name, value in (("dim", dim), ("num_heads", num_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        if kernel not in INLINE_KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(map(repr, INLINE_KERNELS))}, got {kernel!r}")
        if not isinstance(local_residual, bool):
            raise TypeError(f"local_residual must be a bool, got {local_residual!r}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.kernel = kernel
        channels = num_heads * head_dim
        self.residual = nn.Sequential(
            nn.Conv1d(dim, channels, kernel_size=1, groups=num_heads),
            nn.GELU(),
            nn.Conv1d(channels, 9 * channels, kernel_size=1, groups=num_heads),
        ) if local_residual else None

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, local_residual={self.residual is not None}"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        shape, prefix = self.prepare(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        out = inline_attention(q, k, v, self.kernel)
        if self.residual is None:
            return out
        local = self.local_residual(v[:, :, prefix:], shape, x)
        if prefix == 0:
            return out + local
        return torch.cat([out[:, :, :prefix], out[:, :, prefix:] + local], dim=2)

    def local_residual(self, v_grid: Tensor, shape: tuple[int, ...], x: Tensor | None) -> Tensor:
        """The dynamic 3 x 3 depthwise convolution of the grid values ``(B, heads, H W, head_dim)``."""
        if self.residual is None:
            raise ValueError("this InLineMixer was built with local_residual=False")
        b, h, n, d = v_grid.shape
        if x is None:
            raise ValueError("x (the (B, N, C) layer input) is required by InLine's local residual; pass x= "
                             "(visattn.Attention does) or build the mixer with local_residual=False")
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[0] != b or x.shape[-1] != self.dim:
            raise ValueError(f"x must be shaped (B={b}, N, C={self.dim}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        shape = as_shape(shape)
        if len(shape) != 2:
            raise ValueError(f"InLine's local residual needs a 2-D shape (H, W), got shape={shape}")
        if (h, d) != (self.num_heads, self.head_dim):
            raise ValueError(f"v must have heads={self.num_heads} and head_dim={self.head_dim}, got "
                             f"{tuple(v_grid.shape)}")
        channels = h * d
        kernels = self.residual(x.mean(dim=1).unsqueeze(-1).to(self.residual[0].weight.dtype))
        kernels = kernels.to(v_grid.dtype).reshape(b * channels, 1, 3, 3)
        # one image of B * C channels (image b, head, channel), laid out channels-last: the token-major values
        # need a single copy, and the depthwise convolution runs ~2.5x faster than channels-first on CPU
        grid = v_grid.permute(2, 0, 1, 3).reshape(1, *shape, b * channels).permute(0, 3, 1, 2)
        local = F.conv2d(grid, kernels, padding=1, groups=b * channels)
        return local.permute(0, 2, 3, 1).reshape(n, b, h, d).permute(1, 2, 0, 3)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """The InLine weights (rows sum to 1), O(N^2); the local residual is not part of them."""
        self.prepare(q, k, k, shape)
        phi = INLINE_KERNELS[self.kernel]
        return inline_weights(phi(q), phi(k))

    def state_bytes(self, batch_size: int = 1, num_heads: int | None = None, head_dim: int | None = None,
                    value_dim: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """``phi(K)^T V``, ``mean phi(k)``, ``mean v``: ``d (Dv + 1) + Dv`` elements per head (the local residual
        reads the whole value grid and is not part of it)."""
        num_heads, head_dim, value_dim = layout(num_heads, head_dim, value_dim, default_heads=self.num_heads,
                                                default_head_dim=self.head_dim)
        return inline_state_bytes(batch_size, num_heads, head_dim, value_dim, dtype)


def inline_oracle(mixer: InLineMixer, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                  x: Tensor | None = None) -> Tensor:
    """Naive InLine: the dense weights times ``v``, plus the local residual as nine shifted copies of the
    zero-padded value grid weighted by the predicted 3 x 3 kernels (the registry's oracle for ``"inline"``)."""
    out = mixer.attention_weights(q, k, shape) @ v
    if mixer.residual is None:
        return out
    shape, prefix = mixer.prepare(q, k, v, shape)
    batch, heads, _, d = v.shape
    height, width = shape
    kernels = mixer.residual(x.mean(dim=1).unsqueeze(-1).to(mixer.residual[0].weight.dtype)).to(v.dtype)
    kernels = kernels.reshape(batch, heads, d, 3, 3)
    grid = F.pad(v[:, :, prefix:].transpose(2, 3).reshape(batch, heads, d, height, width), (1, 1, 1, 1))
    local = sum(kernels[..., i, j, None, None] * grid[..., i:i + height, j:j + width]
                for i in range(3) for j in range(3))
    local = local.reshape(batch, heads, d, height * width).transpose(2, 3)
    return torch.cat([out[:, :, :prefix], out[:, :, prefix:] + local], dim=2)


@register_mixer("inline", paper="inline", complexity="O(N d^2)", family="reformulated",
                faces=("definition", "module"), oracle=inline_oracle)
def inline(dim: int = 512, num_heads: int = 8, head_dim: int = 64, kernel: str = "identity",
           local_residual: bool = True, attn_drop: float = 0.0) -> InLineMixer:
    """InLine injective linear attention (rows sum to 1) plus a dynamic 3x3 depthwise residual on v."""
    return InLineMixer(dim, num_heads, head_dim, kernel, local_residual, attn_drop)
