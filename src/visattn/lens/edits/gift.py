"""GIFT: gaze-shift saliency over the image, then amplified attention to salient image tokens and the query.

Qi et al., "Capturing Gaze Shifts for Guidance: Cross-Modal Fusion Enhancement for VLM Hallucination Mitigation",
arXiv 2510.22067 (code: amazon-science/GIFT, ``inference.py`` and the patched ``eager_attention_forward`` of
transformers 4.50; LLaVA-1.5-7B uses saliency layer 11, enhancement layers 12-22, ``alpha = 5``).

As the official code does it (the defaults):

1. Saliency (:func:`gaze_shift_saliency`), from the probabilities of the first decoding step: the gaze shift of a
   content-word query token ``t`` is the positive change of its attention to image token ``j`` against the token
   just before it in the sequence, ``D_{h,t,j} = relu(A_{h,t,j} - A_{h,t-1,j})``. Per layer the top ``H/2`` heads
   by ``sum_{t,j} D_{h,t,j}`` are kept; ``S_j`` is the mean of ``D`` over layers, kept heads and content tokens,
   clipped to ``mean(S) +- 3 std(S)``, min-max scaled to [0, 1], and ``F_j = exp(alpha S_j)``.
2. Amplification (:class:`GazeShiftAmplification`), at each decoding step on the last query row: in the top
   ``H/2`` "vision heads" (most attention to the image) ``A_j <- F_j A_j`` on image tokens; one scalar
   ``r = sum_{vision heads} sum_j F_j A_j / sum_{vision heads} sum_j A_j``; in the top ``H/2`` "query heads" (most
   attention to the user query) ``A_j <- r A_j`` on query tokens; then each row is rescaled to its old sum.

Deviations, available as arguments (not the defaults): ``shift="previous_content"`` takes the shift against the
previous content word (the paper's wording), ``rank_heads="attention"`` ranks heads by attention to the image
instead of by the shifts, ``scaling="max"`` divides ``S`` by its maximum (``"none"`` keeps it raw), and
``query_ratio="per_head"`` uses each row's own vision gain as ``r`` (a number fixes it). The official code works on
batch element 0 only; here every batch element gets its own saliency, heads and ``r``. A constant saliency (all
shifts equal, which makes the official min-max divide by zero) gives ``F = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..call import AttentionCall
from ..edit_base import Edit
from ._common import (
    Rows,
    head_mask,
    image_positions,
    indices,
    key_mask,
    number,
    renormalize,
    row_mask,
    rows_arg,
    sequence_positions,
)

SHIFTS = ("previous_token", "previous_content")
HEAD_RANKS = ("shift", "attention")
SCALINGS = ("sigma_minmax", "max", "none")
QUERY_RATIOS = ("pooled", "per_head")
SIGMAS = 3.0


def _top_heads(mass: Tensor, fraction: float) -> Tensor:
    """Bool mask over dim 1 (heads) of the ``max(1, int(H * fraction))`` largest entries of ``mass``."""
    count = max(1, int(mass.shape[1] * fraction))
    top = mass.topk(count, dim=1).indices
    return torch.zeros_like(mass, dtype=torch.bool).scatter(1, top, True)


def _choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return str(value)


def _scale(saliency: Tensor, scaling: str) -> Tensor:
    """``S`` over the image tokens ``(B, n_img)`` scaled as chosen (see the module docstring)."""
    if scaling == "none":
        return saliency
    if scaling == "max":
        peak = saliency.amax(dim=-1, keepdim=True)
        return saliency / torch.where(peak > 0, peak, torch.ones_like(peak))
    if saliency.shape[-1] > 1:
        mean, std = saliency.mean(dim=-1, keepdim=True), saliency.std(dim=-1, keepdim=True)
        saliency = torch.minimum(torch.maximum(saliency, mean - SIGMAS * std), mean + SIGMAS * std)
    low, high = saliency.amin(dim=-1, keepdim=True), saliency.amax(dim=-1, keepdim=True)
    span = high - low
    return torch.where(span > 0, (saliency - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


def gaze_shift_saliency(attention: Tensor | Sequence[Tensor], content_rows: Sequence[int] | Tensor,
                        image_tokens: Sequence[int] | Tensor, alpha: float = 5.0, head_fraction: float = 0.5, *,
                        shift: str = "previous_token", rank_heads: str = "shift",
                        scaling: str = "sigma_minmax") -> Tensor:
    """GIFT's amplification factors ``F_j = exp(alpha S_j)`` over the image tokens, ``(B, n_img)``.

    Args:
        attention: probabilities ``(B, heads, N, N)`` of the saliency layer, or a sequence of them (one per layer;
            the official LLaVA-1.5 config uses layer 11 alone).
        content_rows: positions of the user query's content-word tokens, in order.
        image_tokens: positions of the image tokens.
        alpha: sharpness (4-5 in the paper).
        head_fraction: share of heads kept per layer (1/2).
        shift: ``"previous_token"`` (official: each content token against the token just before it, so one
            content token suffices) or ``"previous_content"`` (against the previous content token; needs two).
        rank_heads: ``"shift"`` (official: by the summed shifts) or ``"attention"`` (by attention to the image).
        scaling: ``"sigma_minmax"`` (official: clip at mean +- 3 std, then min-max), ``"max"`` or ``"none"``.
    """
    layers = [attention] if isinstance(attention, Tensor) else list(attention)
    if not layers or not all(isinstance(a, Tensor) and a.dim() == 4 for a in layers):
        raise TypeError("attention must be a (B, heads, N, N) tensor or a non-empty sequence of them")
    shift = _choice(shift, "shift", SHIFTS)
    rank_heads = _choice(rank_heads, "rank_heads", HEAD_RANKS)
    scaling = _choice(scaling, "scaling", SCALINGS)
    rows = indices(content_rows, "content_rows")
    if shift == "previous_content" and rows.numel() < 2:
        raise ValueError(f"content_rows needs at least two content-word positions for a gaze shift between content "
                         f"words, got {rows.tolist()}")
    if shift == "previous_token" and int(rows.min()) < 1:
        raise ValueError(f"content_rows must be >= 1 (each is compared with the token before it), got "
                         f"{rows.tolist()}")
    image = indices(image_tokens, "image_tokens")
    alpha = number(alpha, "alpha")
    number(head_fraction, "head_fraction", 0.0, 1.0, low_open=True)
    total = None
    for probs in layers:
        n = probs.shape[-1]
        for name, idx in (("content_rows", rows), ("image_tokens", image)):
            if int(idx.max()) >= n:
                raise ValueError(f"{name} {idx[idx >= n].tolist()} out of range for {n} tokens")
        row, col = rows.to(probs.device), image.to(probs.device)
        seen = probs[:, :, row][..., col]
        before = probs[:, :, row - 1][..., col] if shift == "previous_token" else seen[:, :, :-1]
        after = seen if shift == "previous_token" else seen[:, :, 1:]
        shifts = torch.relu(after - before)
        heads = _top_heads((shifts if rank_heads == "shift" else seen).sum(dim=(2, 3)), head_fraction)
        kept = (shifts * heads[..., None, None]).sum(dim=(1, 2)) / (heads.sum(1, keepdim=True) * shifts.shape[2])
        total = kept if total is None else total + kept
    return torch.exp(alpha * _scale(total / len(layers), scaling))


class GazeShiftAmplification(Edit):
    """GIFT's amplification of image attention by ``F`` and of query attention by ``r`` in the top heads.

    Args:
        factors: ``F`` over the image tokens, ``(n_img,)`` or ``(B, n_img)`` (from :func:`gaze_shift_saliency`).
        query_tokens: positions of the user query's tokens in the sequence.
        query_ratio: ``"pooled"`` (official: one ``r`` per row over the top vision heads), ``"per_head"`` (each
            head's own vision gain ``sum_V F A / sum_V A``) or a fixed number.
        head_fraction: share of heads amplified for each modality (1/2).
        rows: query rows edited (``"last"``: the token being generated, as the official code).
        layers, heads: where the edit may act (the paper: layers 12-22 of LLaVA-1.5-7B).
    """

    def __init__(self, factors: Tensor, query_tokens: Sequence[int] | Tensor, *,
                 query_ratio: float | str = "pooled", head_fraction: float = 0.5, rows: Rows = "last",
                 layers: Sequence[int] | None = None, heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        if not isinstance(factors, Tensor) or not factors.is_floating_point() or factors.dim() not in (1, 2):
            raise TypeError(f"factors must be a float tensor (n_img,) or (B, n_img), got "
                            f"{getattr(factors, 'shape', type(factors).__name__)}")
        if bool((factors < 0).any()) or not bool(torch.isfinite(factors).all()):
            raise ValueError("factors must be finite and non-negative")
        self.factors = factors
        self.query_tokens = indices(query_tokens, "query_tokens")
        if isinstance(query_ratio, str):
            self.query_ratio: float | str = _choice(query_ratio, "query_ratio", QUERY_RATIOS)
        else:
            self.query_ratio = number(query_ratio, "query_ratio", 0.0)
        self.head_fraction = number(head_fraction, "head_fraction", 0.0, 1.0, low_open=True)
        self.rows = rows_arg(rows)

    def _ratio(self, probs: Tensor, visual: Tensor, gain: Tensor, vision_heads: Tensor) -> Tensor:
        """``r`` broadcastable to ``(B, heads, Nq, 1)``."""
        if not isinstance(self.query_ratio, str):
            return probs.new_tensor(self.query_ratio)
        mass = (probs * visual).sum(-1, keepdim=True)
        boosted = (probs * visual * gain).sum(-1, keepdim=True)
        if self.query_ratio == "pooled":
            chosen = vision_heads[..., None]
            mass = (mass * chosen).sum(1, keepdim=True)
            boosted = (boosted * chosen).sum(1, keepdim=True)
        return boosted / torch.where(mass > 0, mass, torch.ones_like(mass))

    def edit_probs(self, probs: Tensor, call: AttentionCall) -> Tensor:
        image = image_positions(call, "GazeShiftAmplification")
        if self.factors.shape[-1] != image.numel():
            raise ValueError(f"GazeShiftAmplification: factors cover {self.factors.shape[-1]} image tokens, layer "
                             f"{call.layer} has {image.numel()}")
        nk = probs.shape[-1]
        gain = torch.ones(probs.shape[0], nk, dtype=probs.dtype, device=probs.device)
        gain[:, image] = self.factors.to(probs)
        gain = gain[:, None, None, :]
        visual = key_mask(image, nk, probs.device)
        query = key_mask(sequence_positions(self.query_tokens, call, "query_tokens"), nk, probs.device)
        vision_heads = _top_heads((probs * visual).sum(-1), self.head_fraction)
        query_heads = _top_heads((probs * query).sum(-1), self.head_fraction)
        ratio = self._ratio(probs, visual, gain, vision_heads)
        scale = torch.where(vision_heads[..., None] & visual, gain, 1.0)
        scale = torch.where(query_heads[..., None] & query, scale * ratio, scale)
        new = renormalize(probs * scale, probs)
        where = row_mask(call, self.rows)[:, None] & head_mask(self.heads, probs.shape[1], probs.device,
                                                                  "GazeShiftAmplification")[:, None, None]
        return torch.where(where, new, probs)
