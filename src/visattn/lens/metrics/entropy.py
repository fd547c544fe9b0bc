"""Attention entropy, the focus measure of CARVE.

Ge et al., "Focusing by Contrastive Attention: Enhancing VLMs' Visual Reasoning", arXiv 2509.06461: a
query's attention over the visual tokens, ``a``, has entropy ``H = -sum_i a_i ln a_i``; CARVE reports the mean of
``H`` over layers for the last query (the token being generated) with heads averaged first. Low entropy = focused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._validate import TokenSelection, layer_stack, tensor, token_mask


def attention_entropy(probs: Tensor, keys: TokenSelection = None, renormalize: bool = True) -> Tensor:
    """Entropy ``H = -sum_k a_k ln a_k`` of each attention row over the selected keys (``0 ln 0 = 0``).

    Args:
        probs: attention probabilities ``(..., Nq, Nk)``.
        keys: the keys to keep (e.g. the visual tokens): None (all), a slice, a bool mask ``(Nk,)`` or indices.
        renormalize: divide each row by its mass on the kept keys first, so ``a`` is a distribution over them
            (uniform attention over ``n`` kept keys gives ``ln n``); a row with no mass there gives 0.
            With False the raw terms are summed (CARVE's released maps are not renormalised).

    Returns:
        ``(..., Nq)``, in nats.
    """
    probs = tensor(probs, "probs", min_dim=2)
    kept = probs[..., token_mask(keys, probs.shape[-1], "keys", probs.device)]
    if renormalize:
        mass = kept.sum(dim=-1, keepdim=True)
        kept = torch.where(mass > 0, kept / torch.where(mass > 0, mass, 1.0), 0.0)
    return -torch.xlogy(kept, kept).sum(dim=-1)


def visual_attention_entropy(
    probs: Tensor | Sequence[Tensor],
    visual: TokenSelection,
    query: int = -1,
    renormalize: bool = True,
) -> Tensor:
    """CARVE's entropy: mean over layers of the entropy of ``query``'s head-averaged attention over visual keys.

    ``H = (1/L) sum_l H(mean_h A_l[h, query, visual])``.

    Args:
        probs: per layer ``(B, heads, Nq, Nk)``, as a sequence or stacked ``(layers, B, heads, Nq, Nk)``.
        visual: the visual keys (see :func:`attention_entropy`).
        query: the query row (default the last, the token being generated).
        renormalize: as in :func:`attention_entropy`.

    Returns:
        ``(B,)``.
    """
    stacked = layer_stack(probs, "probs", dims=4)
    rows = stacked.shape[-2]
    if not -rows <= query < rows:
        raise ValueError(f"query {query} out of range for {rows} query rows")
    fused = stacked[..., query, :].mean(dim=2)
    return attention_entropy(fused.unsqueeze(-2), visual, renormalize).squeeze(-1).mean(dim=0)
