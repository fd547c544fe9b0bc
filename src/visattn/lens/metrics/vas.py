"""Visual Attention Score (VAS): how much the query tokens of a vision-language model look at the image.

Luo et al., "From Narrow to Panoramic Vision: Attention-Guided Cold-Start Reshapes Multimodal Reasoning", arXiv
2603.03825: attention from query tokens ``Q`` to visual keys ``V`` over attention to system-prompt keys ``S``,
averaged over layers and heads. With ``per_key=True`` (default) both sides are means per key, the normalisation of
the paper's attention-guidance losses ``(1/(|Q| |K|)) sum_{q in Q} sum_{k in K} A_qk``:

``VAS_{l,h} = [(1/(|Q||V|)) sum_{q,k in V} A_qk] / [(1/(|Q||S|)) sum_{q,k in S} A_qk]``,
``VAS = mean_{l,h} VAS_{l,h}``.

With ``per_key=False`` the sums are compared (mass on the image over mass on the system prompt).
"""

from __future__ import annotations

from torch import Tensor

from ._validate import TokenSelection, tensor, token_mask


def visual_attention_score(
    probs: Tensor,
    visual: TokenSelection,
    system: TokenSelection,
    queries: TokenSelection = None,
    per_key: bool = True,
    reduce: bool = True,
    eps: float = 1e-12,
) -> Tensor:
    """VAS of attention maps.

    Args:
        probs: attention probabilities ``(..., Nq, Nk)``, e.g. ``(layers, B, heads, Nq, Nk)``.
        visual: the visual keys ``V`` (bool mask ``(Nk,)``, indices or a slice).
        system: the system-prompt keys ``S``.
        queries: the query rows ``Q`` (None: all rows).
        per_key: compare mean attention per key (default) or total attention.
        reduce: average over every leading dim (a scalar); False keeps ``(...)``.
        eps: added to the denominator.

    Returns:
        a scalar, or ``(...)`` with ``reduce=False``.
    """
    probs = tensor(probs, "probs", min_dim=2)
    nq, nk = probs.shape[-2:]
    v = token_mask(visual, nk, "visual", probs.device)
    s = token_mask(system, nk, "system", probs.device)
    q = token_mask(queries, nq, "queries", probs.device)
    for name, mask, size in (("visual", v, nk), ("system", s, nk), ("queries", q, nq)):
        if not mask.any():
            raise ValueError(f"{name} selects no tokens out of {size}")
    if (v & s).any():
        raise ValueError(f"visual and system keys overlap at {v.logical_and(s).nonzero().flatten().tolist()}")
    rows = probs[..., q, :]
    to_visual = rows[..., v].sum(dim=(-2, -1))
    to_system = rows[..., s].sum(dim=(-2, -1))
    if per_key:
        to_visual = to_visual / int(v.sum())
        to_system = to_system / int(s.sum())
    score = to_visual / (to_system + eps)
    return score.mean() if reduce else score
