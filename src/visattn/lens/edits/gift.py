"""GIFT: gaze-shift saliency over the image, then amplified attention to salient image tokens and the query.

Qi et al., "Capturing Gaze Shifts for Guidance: Cross-Modal Fusion Enhancement for VLM Hallucination Mitigation",
arXiv 2510.22067 (code: amazon-science/GIFT, a patched transformers 4.50; LLaVA-1.5-7B uses saliency layer 11,
enhancement layers 12-22, ``alpha = 5``).

1. Saliency (:func:`gaze_shift_saliency`): for consecutive content-word tokens ``t-1, t`` of the user query, the
   positive change of their attention to image token ``j``, summed over the top ``H/2`` heads (by attention to the
   image) and over ``t``: ``S_j = sum_t sum_h relu(A_{t,h,j} - A_{t-1,h,j})``; ``F_j = exp(alpha S_j)``.
2. Amplification (:class:`GazeShiftAmplification`), at each decoding step: in the top ``H/2`` "vision heads" of the
   row (most attention to the image) ``A_j <- F_j A_j`` on image tokens; in the top ``H/2`` "query heads" (most
   attention to the user query) ``A_j <- r A_j`` on query tokens; then the row is rescaled to its old sum.

The official patch could not be read for this implementation; three choices are ours and are arguments:
``S`` is divided by its maximum before the exponential (``normalize=True``), the query ratio ``r`` is the row's
vision gain ``sum_V F_j A_j / sum_V A_j`` unless ``query_ratio`` is given, and head ranks are taken per row.
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


def _top_heads(mass: Tensor, fraction: float) -> Tensor:
    """Bool mask over dim 1 (heads) of the ``max(1, int(H * fraction))`` largest entries of ``mass``."""
    count = max(1, int(mass.shape[1] * fraction))
    top = mass.topk(count, dim=1).indices
    return torch.zeros_like(mass, dtype=torch.bool).scatter(1, top, True)


def gaze_shift_saliency(attention: Tensor | Sequence[Tensor], content_rows: Sequence[int] | Tensor,
                        image_tokens: Sequence[int] | Tensor, alpha: float = 5.0, head_fraction: float = 0.5,
                        normalize: bool = True) -> Tensor:
    """GIFT's amplification factors ``F_j = exp(alpha S_j)`` over the image tokens, ``(B, n_img)``.

    Args:
        attention: probabilities ``(B, heads, N, N)`` of the saliency layer, or a sequence of them (the saliency of
            several layers is summed).
        content_rows: positions of the user query's content-word tokens, in order (at least two).
        image_tokens: positions of the image tokens.
        alpha: sharpness (4-5 in the paper).
        head_fraction: share of heads kept, by attention from the content rows to the image (1/2).
        normalize: divide ``S`` by its maximum over the image tokens first.
    """
    layers = [attention] if isinstance(attention, Tensor) else list(attention)
    if not layers or not all(isinstance(a, Tensor) and a.dim() == 4 for a in layers):
        raise TypeError("attention must be a (B, heads, N, N) tensor or a non-empty sequence of them")
    rows = indices(content_rows, "content_rows")
    if rows.numel() < 2:
        raise ValueError(f"content_rows needs at least two content-word positions for a gaze shift, got "
                         f"{rows.tolist()}")
    image = indices(image_tokens, "image_tokens")
    alpha = number(alpha, "alpha")
    number(head_fraction, "head_fraction", 0.0, 1.0, low_open=True)
    saliency = None
    for probs in layers:
        n = probs.shape[-1]
        for name, idx in (("content_rows", rows), ("image_tokens", image)):
            if int(idx.max()) >= n:
                raise ValueError(f"{name} {idx[idx >= n].tolist()} out of range for {n} tokens")
        seen = probs[:, :, rows.to(probs.device)][..., image.to(probs.device)]
        heads = _top_heads(seen.sum(dim=(2, 3)), head_fraction)
        shifts = torch.relu(seen[:, :, 1:] - seen[:, :, :-1]).sum(2)
        layer_saliency = (shifts * heads[..., None]).sum(1)
        saliency = layer_saliency if saliency is None else saliency + layer_saliency
    if normalize:
        peak = saliency.amax(dim=-1, keepdim=True)
        saliency = saliency / torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.exp(alpha * saliency)


class GazeShiftAmplification(Edit):
    """GIFT's amplification of image attention by ``F`` and of query attention by ``r`` in the top heads.

    Args:
        factors: ``F`` over the image tokens, ``(n_img,)`` or ``(B, n_img)`` (from :func:`gaze_shift_saliency`).
        query_tokens: positions of the user query's tokens in the sequence.
        query_ratio: the factor ``r`` on query tokens; None = the row's vision gain (see the module docstring).
        head_fraction: share of heads amplified for each modality (1/2).
        rows: query rows edited (``"last"``: the token being generated).
        layers, heads: where the edit may act (the paper: layers 12-22 of LLaVA-1.5-7B).
    """

    def __init__(self, factors: Tensor, query_tokens: Sequence[int] | Tensor, *, query_ratio: float | None = None,
                 head_fraction: float = 0.5, rows: Rows = "last", layers: Sequence[int] | None = None,
                 heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        if not isinstance(factors, Tensor) or not factors.is_floating_point() or factors.dim() not in (1, 2):
            raise TypeError(f"factors must be a float tensor (n_img,) or (B, n_img), got "
                            f"{getattr(factors, 'shape', type(factors).__name__)}")
        if bool((factors < 0).any()) or not bool(torch.isfinite(factors).all()):
            raise ValueError("factors must be finite and non-negative")
        self.factors = factors
        self.query_tokens = indices(query_tokens, "query_tokens")
        self.query_ratio = None if query_ratio is None else number(query_ratio, "query_ratio", 0.0)
        self.head_fraction = number(head_fraction, "head_fraction", 0.0, 1.0, low_open=True)
        self.rows = rows_arg(rows)

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
        visual_mass = (probs * visual).sum(-1, keepdim=True)
        if self.query_ratio is None:
            boosted = (probs * visual * gain).sum(-1, keepdim=True)
            ratio = boosted / torch.where(visual_mass > 0, visual_mass, torch.ones_like(visual_mass))
        else:
            ratio = probs.new_tensor(self.query_ratio)
        scale = torch.where(vision_heads[..., None] & visual, gain, 1.0)
        scale = torch.where(query_heads[..., None] & query, scale * ratio, scale)
        new = renormalize(probs * scale, probs)
        where = row_mask(call, self.rows)[:, None] & head_mask(self.heads, probs.shape[1], probs.device,
                                                                  "GazeShiftAmplification")[:, None, None]
        return torch.where(where, new, probs)
