"""L2ViT: enhanced linear attention and the local concentration module.

Paper: Zheng et al., "The Linear Attention Resurrection in Vision Transformer" (arXiv 2501.16182).

Enhanced linear attention (the paper's Eq. 6 as in the released ``LinearAttention``): ``q, k = relu(q), relu(k)``,

    out_i = q_i (K^T V) tau_h / max(q_i . sum_j k_j, 100),

with a learnable temperature ``tau_h`` per head, initialised to ``d^-1/2``. The clamp of the denominator at 100
(instead of a row normalisation) keeps the weights of queries with a small kernel sum from blowing up; the paper
reports it stabilises training. Cost O(N d^2). The parameter is named ``temperature`` with the released shape
``(heads, 1, 1)`` so released weights load.

Local concentration module (LCM): ``x + dwconv7x7(BN(GELU(dwconv7x7(LN(x)))))`` on a feature map; the released
code applies it after each linear attention, ``x = x + LCM(norm3(x))``; here the LayerNorm and the residual are
part of the module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.l2vit import enhanced_linear_attention, enhanced_linear_weights, l2vit_state_bytes
from ..ops.recurrent_state import layout
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["L2ViTLinearMixer", "LocalConcentrationModule"]


class L2ViTLinearMixer(TokenMixer):
    """L2ViT enhanced linear attention (Zheng et al., arXiv 2501.16182) as a token mixer.

    Args:
        num_heads, head_dim: layout of q, k, v; ``temperature`` ``(num_heads, 1, 1)`` starts at ``head_dim^-1/2``.
        min_denominator: the clamp of the denominator (paper: 100).
        attn_drop: accepted for timm compatibility; there are no attention weights to drop (warns once in training
            when > 0).
    """

    uses_attn_drop = False

    def __init__(self, num_heads: int = 8, head_dim: int = 64, min_denominator: float = 100.0,
                 attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        for name, value in (("num_heads", num_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not min_denominator > 0:
            raise ValueError(f"min_denominator must be > 0, got {min_denominator!r}")
        self.num_heads = num_heads
        self.min_denominator = float(min_denominator)
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), head_dim ** -0.5))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, min_denominator={self.min_denominator}"

    def _temperature(self, q: Tensor) -> Tensor:
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q must have heads={self.num_heads}, got shape {tuple(q.shape)}")
        return self.temperature.to(q.dtype)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        return enhanced_linear_attention(q, k, v, self._temperature(q), self.min_denominator)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """``w_ij = tau relu(q_i) . relu(k_j) / max(relu(q_i) . sum relu(k), 100)``, O(N^2); rows need not sum
        to 1 (they sum to ``tau`` times at most 1)."""
        self.prepare(q, k, k, shape)
        return enhanced_linear_weights(q, k, self._temperature(q), self.min_denominator)

    def state_bytes(self, batch_size: int = 1, num_heads: int | None = None, head_dim: int | None = None,
                    value_dim: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """``relu(K)^T V`` and ``sum_j relu(k_j)``: ``d (Dv + 1)`` elements per head."""
        num_heads, head_dim, value_dim = layout(num_heads, head_dim, value_dim, default_heads=self.num_heads)
        return l2vit_state_bytes(batch_size, num_heads, head_dim, value_dim, dtype)


@register_mixer("l2vit_linear", paper="l2vit", complexity="O(N d^2)", family="reformulated",
                faces=("definition", "module"))
def l2vit_linear(num_heads: int = 8, head_dim: int = 64, min_denominator: float = 100.0,
                 attn_drop: float = 0.0) -> L2ViTLinearMixer:
    """L2ViT enhanced linear attention: relu kernels, denominator clamped at 100, learnable temperature per head."""
    return L2ViTLinearMixer(num_heads, head_dim, min_denominator, attn_drop)


class LocalConcentrationModule(nn.Module):
    """L2ViT's local concentration module on ``(B, C, H, W)`` maps: ``x + dw7(BN(GELU(dw7(LN(x)))))``.

    ``LN`` normalises over channels (timm ``LayerNorm2d``, eps 1e-5 as ``nn.LayerNorm`` in the released block);
    ``dw7`` are depthwise 7 x 7 convolutions with bias (``conv1``, ``conv2``); ``bn`` is ``BatchNorm2d``. The names
    ``conv1``, ``bn``, ``conv2`` match the released ``LCM``; ``norm`` holds the block's ``norm3``.
    """

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("kernel_size", kernel_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size output), got {kernel_size}")
        from timm.layers import LayerNorm2d

        self.dim = dim
        self.norm = LayerNorm2d(dim, eps=1e-5)
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"x must be shaped (B, C={self.dim}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        return x + self.conv2(self.bn(self.act(self.conv1(self.norm(x)))))
