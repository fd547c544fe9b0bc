"""Layer dissimilarity of the residual stream, the input of phase segmentation (block-recurrent ViTs).

Jacobs et al., "Block-Recurrent Dynamics in Vision Transformers" (Raptor), arXiv 2512.19941: each layer ``l`` is
summarised by two tokens, the class token and the mean of the patch tokens, ``a_l = [x_cls, mean_p x_p]``;
``W[l, m] = mean over images and the two tokens of (1 - cos(a_l, a_m))``, cosines clamped to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._validate import layer_stack


def layer_summary(hidden: Tensor, num_prefix_tokens: int = 1) -> Tensor:
    """``(..., N, C) -> (..., T, C)``: the class token (token 0, if ``num_prefix_tokens >= 1``) and the mean of the
    tokens after the prefix (``T = 2``, or 1 without a class token)."""
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
    if hidden.shape[-2] <= num_prefix_tokens:
        raise ValueError(f"hidden has {hidden.shape[-2]} tokens, none after num_prefix_tokens={num_prefix_tokens}")
    patches = hidden[..., num_prefix_tokens:, :].mean(dim=-2, keepdim=True)
    if num_prefix_tokens == 0:
        return patches
    return torch.cat([hidden[..., :1, :], patches], dim=-2)


def layer_dissimilarity(hidden: Tensor | Sequence[Tensor], num_prefix_tokens: int = 1, eps: float = 1e-8) -> Tensor:
    """``W[l, m] = mean(1 - cos(a_l, a_m))`` over images and summary tokens.

    Args:
        hidden: per layer ``(B, N, C)`` (the residual stream leaving or entering each layer), as a sequence or
            stacked ``(layers, B, N, C)``.
        num_prefix_tokens: tokens in front of the patches; token 0 is the class token when it is >= 1.
        eps: floor of the norms in the cosine.

    Returns:
        ``(layers, layers)``: symmetric, zero diagonal, entries in [0, 2].
    """
    stacked = layer_stack(hidden, "hidden", dims=3)
    summary = layer_summary(stacked, num_prefix_tokens)
    cos = torch.nn.functional.cosine_similarity(summary.unsqueeze(1), summary.unsqueeze(0), dim=-1, eps=eps)
    return (1.0 - cos.clamp(-1.0, 1.0)).mean(dim=(-2, -1)).fill_diagonal_(0.0)
