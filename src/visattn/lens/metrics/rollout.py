"""Attention rollout and gradient rollout: where information from each input token ends up after all layers.

Rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", arXiv 2005.00928): fuse the heads of each
layer, ``A_l = fuse_h(A_{l,h})``, add the residual path and renormalise the rows,
``Â_l = (A_l + I) / 2`` then ``Â_l[i, :] /= sum_j Â_l[i, j]``, and multiply: ``R = Â_L ... Â_2 Â_1``.
``R[i, j]`` is how much output token ``i`` draws from input token ``j``; the class token's row over the grid is the
usual saliency picture.

Gradient rollout (Chefer et al., "Transformer Interpretability Beyond Attention Visualization", arXiv 2012.09838,
as popularised by vit-explain): each layer's map is weighted by the gradient of the explained score with respect
to it, ``A_l = mean_h (A_{l,h} * dS/dA_{l,h})^+``, then rolled out the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..._checks import as_shape, num_tokens
from ._validate import layer_stack, square_last, tensor

HEAD_FUSIONS = ("mean", "max", "min")
POSITIVE_PARTS = ("per_head", "after_mean")


def fuse_heads(probs: Tensor, how: str = "mean") -> Tensor:
    """``(..., heads, N, N) -> (..., N, N)`` by the mean, max or min over heads."""
    probs = tensor(probs, "probs", min_dim=3)
    if how == "mean":
        return probs.mean(dim=-3)
    if how == "max":
        return probs.amax(dim=-3)
    if how == "min":
        return probs.amin(dim=-3)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {how!r}")


def _discard(maps: Tensor, ratio: float) -> Tensor:
    """vit-explain's filter: zero the ``int(N * N * ratio)`` smallest entries of each ``(N, N)`` map, diagonal
    included, sparing only the class token's own entry ``[0, 0]`` (when it is among the smallest, one entry fewer
    is zeroed). vit-explain filters batch element 0 only; here every map is filtered."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio!r}")
    n = maps.shape[-1]
    count = int(n * n * ratio)
    if count == 0:
        return maps
    flat = maps.flatten(-2)
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, flat.topk(count, dim=-1, largest=False).indices, True)
    drop[..., 0] = False
    return maps.masked_fill(drop.view_as(maps), 0.0)


def rollout(maps: Tensor | Sequence[Tensor], discard_ratio: float = 0.0) -> Tensor:
    """``R = Â_L ... Â_1`` from head-fused maps ``(layers, B, N, N)`` (first layer first), with
    ``Â = rownorm((A + I) / 2)``; returns ``(B, N, N)``."""
    stacked = layer_stack(maps, "maps", dims=3)
    n = square_last(stacked, "maps")
    eye = torch.eye(n, dtype=stacked.dtype, device=stacked.device)
    result = eye.expand(stacked.shape[1], n, n)
    for fused in _discard(stacked, discard_ratio):
        step = (fused + eye) / 2
        step = step / step.sum(dim=-1, keepdim=True)
        result = step @ result
    return result


def attention_rollout(probs: Tensor | Sequence[Tensor], head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout of per-layer probabilities.

    Args:
        probs: per layer ``(B, heads, N, N)`` (first layer first), as a sequence or ``(layers, B, heads, N, N)``.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"``.
        discard_ratio: zero this fraction of the smallest entries of each fused map, all but the class token's own
            entry ``[0, 0]`` (vit-explain's noise filter, before the residual is added; 0 keeps everything).

    Returns:
        ``(B, N, N)``; rows sum to 1 when the input rows do.
    """
    stacked = layer_stack(probs, "probs", dims=4)
    square_last(stacked, "probs")
    return rollout(fuse_heads(stacked, head_fusion), discard_ratio)


def gradient_rollout(probs: Tensor | Sequence[Tensor], grads: Tensor | Sequence[Tensor],
                     discard_ratio: float = 0.0, positive: str = "per_head") -> Tensor:
    """Gradient rollout: ``A_l = mean_h (A_{l,h} * G_{l,h})^+`` rolled out like :func:`attention_rollout`.

    Args:
        probs: per layer ``(B, heads, N, N)``, first layer first.
        grads: ``dS/dA`` for each of them (same shapes), e.g. from ``torch.autograd.grad(score, probs)``.
        discard_ratio: as in :func:`attention_rollout`.
        positive: ``"per_head"`` takes the positive part before the head mean (Chefer et al.); ``"after_mean"``
            after it (vit-explain).

    Returns:
        ``(B, N, N)``.
    """
    a = layer_stack(probs, "probs", dims=4)
    g = layer_stack(grads, "grads", dims=4)
    if a.shape != g.shape:
        raise ValueError(f"grads {tuple(g.shape)} must have the shape of probs {tuple(a.shape)}")
    square_last(a, "probs")
    weighted = a * g
    if positive == "per_head":
        fused = weighted.clamp(min=0).mean(dim=2)
    elif positive == "after_mean":
        fused = weighted.mean(dim=2).clamp(min=0)
    else:
        raise ValueError(f"positive must be one of {POSITIVE_PARTS}, got {positive!r}")
    return rollout(fused, discard_ratio)


def token_map(relevance: Tensor, grid: int | Sequence[int], num_prefix_tokens: int = 0, query: int = 0) -> Tensor:
    """Row ``query`` of a ``(B, N, N)`` rollout (or attention map) over the grid keys, shaped ``(B, *grid)``."""
    relevance = tensor(relevance, "relevance", min_dim=3)
    if relevance.dim() != 3:
        raise ValueError(f"relevance must be (B, N, N), got shape {tuple(relevance.shape)}")
    shape = as_shape(grid, "grid", max_dims=3)
    n = square_last(relevance, "relevance")
    if n != num_prefix_tokens + num_tokens(shape):
        raise ValueError(f"relevance has {n} tokens but num_prefix_tokens + prod(grid) = {num_prefix_tokens} + "
                         f"{num_tokens(shape)} (grid {shape})")
    if not -n <= query < n:
        raise ValueError(f"query {query} out of range for {n} tokens")
    return relevance[:, query, num_prefix_tokens:].reshape(relevance.shape[0], *shape)
