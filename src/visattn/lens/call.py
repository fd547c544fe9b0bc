"""``AttentionCall``: one layer's attention as the lens sees it, whatever model it came from.

Every adapter (visattn modules, timm ViTs, Hugging Face attention functions) turns a layer's attention into an
``AttentionCall`` and hands it to :func:`visattn.lens.compute.lens_attention`, so capture and edits are written
once, against this record, not once per model family.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from .layout import TokenLayout


@dataclass
class AttentionCall:
    """The inputs of one attention computation.

    Attributes:
        layer: index of the layer in the model's order of attention layers (0-based).
        name: the module's qualified name in the model.
        q: queries ``(B, heads, Nq, head_dim)`` after any norm / rotary embedding.
        k: keys ``(B, heads, Nk, head_dim)`` (grouped-query keys already repeated per head).
        v: values ``(B, heads, Nk, head_dim_v)``.
        scale: logit scale applied to ``q k^T``.
        bias: additive mask/bias broadcastable to ``(B, heads, Nq, Nk)`` (-inf = masked), or None.
        hidden: the hidden state entering the layer ``(B, N, C)``, where the adapter has it, else None.
        grid: spatial layout of the image tokens, where known (e.g. ``(14, 14)``).
        num_prefix_tokens: tokens in front of the grid (class, register), where known.
        image_tokens: index tensor of the visual tokens in the sequence, where known (vision-language models).
        layout: where the call's grid queries and keys lie on the layer's feature map (windows, blocks, halos),
            where the adapter knows it (:class:`~visattn.lens.layout.TokenLayout`).
    """

    layer: int
    name: str
    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    bias: Tensor | None = None
    hidden: Tensor | None = None
    grid: tuple[int, ...] | None = None
    num_prefix_tokens: int = 0
    image_tokens: Tensor | None = None
    layout: TokenLayout | None = None

    def with_qkv(self, q: Tensor, k: Tensor, v: Tensor) -> AttentionCall:
        """A copy with other q, k, v (for edits that act on them)."""
        return replace(self, q=q, k=k, v=v)

    @property
    def num_heads(self) -> int:
        return self.q.shape[1]
