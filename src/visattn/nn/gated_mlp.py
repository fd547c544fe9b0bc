"""Deconstructing Attention's no-mixing variant, ``GatedMLP``, in its own module so that timm is imported on use.

Paper: Xue, Moosavi & Aletras, "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (arXiv 2510.11602): ``FC_down(SiLU(FC_gate H) * FC_up H)`` in place of attention. The class derives from
timm's ``SwiGLU``, and importing timm imports timm.models, torchvision and torch._dynamo (seconds), so
:mod:`visattn.nn` and :mod:`visattn.nn.deconstructed` import this module on first access to ``GatedMLP``.
"""

from __future__ import annotations

from timm.layers import SwiGLU
from torch import Tensor

__all__ = ["GatedMLP"]


class GatedMLP(SwiGLU):
    """Deconstructing Attention's no-mixing variant: ``FC_down(SiLU(FC_gate H) * FC_up H)``, token by token.

    timm's :class:`~timm.layers.SwiGLU` (``fc1_g`` = FC_gate, ``fc1_x`` = FC_up, ``fc2`` = FC_down) with the call
    signature of :class:`~visattn.nn.Attention` (``shape``, ``attn_mask`` and ``is_causal`` are accepted and
    ignored: nothing mixes across tokens). ``hidden_features`` defaults to ``dim`` (the paper does not say).
    """

    def __init__(self, dim: int, hidden_features: int | None = None, bias: bool = False) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        super().__init__(dim, hidden_features or dim, dim, bias=bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False, *,
                shape: int | tuple[int, ...] | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"x must be shaped (B, N, C), got {tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        return super().forward(x)
