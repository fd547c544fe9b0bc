"""Affine scaling of attention applied at inference: ``A' = alpha A + beta`` with rows summing to ``alpha_ma``.

"Affine-Scaled Attention: Towards Flexible and Stable Transformer Attention", arXiv 2602.23057. Per head and query
``i`` over the ``n_i`` keys it sees,

    A'_ij = alpha_i A_ij + (alpha_ma - alpha_i) / n_i,

with ``alpha_i = phi(W_a x_i)``, ``phi(z) = clip(0.1 z + 0.5, 0, 1)`` (:func:`visattn.nn.affine_scaled.linear_clip`)
when a projection ``weight = W_a`` (``heads x C``) is given (then the call's hidden state ``x`` is needed), or a
fixed ``alpha`` (a number or one per head). ``alpha = alpha_ma = 1`` changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...nn.affine_scaled import linear_clip
from ..call import AttentionCall
from ..edit_base import Edit
from ._common import head_mask, number, visible_keys


def _per_head(value: float | Tensor, name: str) -> float | Tensor:
    if isinstance(value, Tensor):
        if value.dim() != 1 or not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} as a tensor must be 1-d (one finite value per head), got "
                             f"{value.dtype} {tuple(value.shape)}")
        return value
    return number(value, name)


class AffineAttentionScaling(Edit):
    """``A' = alpha A + (alpha_ma - alpha) / n`` on chosen layers and heads.

    Args:
        alpha: fixed scale, a number or ``(heads,)``; ignored when ``weight`` is given.
        weight: ``W_a`` ``(heads, C)``; ``alpha = phi(x W_a^T)`` per token from ``call.hidden``.
        alpha_ma: the row sum after the edit, a number or ``(heads,)`` (1 keeps rows normalised).
        layers, heads: where the edit acts.
    """

    def __init__(self, alpha: float | Tensor = 1.0, *, weight: Tensor | None = None, alpha_ma: float | Tensor = 1.0,
                 layers: Sequence[int] | None = None, heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        self.alpha = _per_head(alpha, "alpha")
        self.alpha_ma = _per_head(alpha_ma, "alpha_ma")
        if weight is not None and (not isinstance(weight, Tensor) or weight.dim() != 2
                                   or not weight.is_floating_point()):
            raise TypeError(f"weight must be a float (heads, C) tensor (W_a), got "
                            f"{getattr(weight, 'shape', type(weight).__name__)}")
        self.weight = weight

    def _alpha(self, probs: Tensor, call: AttentionCall) -> Tensor:
        b, h, nq, _ = probs.shape
        if self.weight is None:
            return _as_heads(self.alpha, h, probs, "alpha")
        if call.hidden is None:
            raise ValueError(f"AffineAttentionScaling with weight= needs the hidden state entering the layer, but "
                             f"the attention call of layer {call.layer} ('{call.name}') has hidden=None")
        if self.weight.shape != (h, call.hidden.shape[-1]):
            raise ValueError(f"weight must be (heads, C) = ({h}, {call.hidden.shape[-1]}) for layer {call.layer}, "
                             f"got {tuple(self.weight.shape)}")
        x = call.hidden[:, -nq:].to(probs.dtype)
        return linear_clip(x @ self.weight.to(probs).T).transpose(1, 2).unsqueeze(-1)

    def edit_probs(self, probs: Tensor, call: AttentionCall) -> Tensor:
        alpha = self._alpha(probs, call)
        visible = visible_keys(call, probs).to(probs.dtype)
        count = visible.sum(-1, keepdim=True)
        alpha_ma = _as_heads(self.alpha_ma, probs.shape[1], probs, "alpha_ma")
        new = alpha * probs + (alpha_ma - alpha) / count.clamp_min(1.0) * visible
        heads = head_mask(self.heads, probs.shape[1], probs.device, "AffineAttentionScaling")
        return torch.where(heads[:, None, None] & (count > 0), new, probs)


def _as_heads(value: float | Tensor, heads: int, like: Tensor, name: str) -> Tensor:
    if isinstance(value, Tensor):
        if value.shape[0] != heads:
            raise ValueError(f"{name} has {value.shape[0]} entries, the call has {heads} heads")
        return value.to(like).view(1, heads, 1, 1)
    return like.new_tensor(value)
