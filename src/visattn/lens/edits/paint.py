"""Imbalanced-attention fix (PAINT): boost the pre-softmax logits of chosen image tokens for the generated token.

Hasan et al., "Fixing Imbalanced Attention to Mitigate In-Context Hallucination of Large Vision-Language Model",
arXiv 2501.12206 (code: hasanar1f/PAINT). On the logits ``z`` of the last query row (the token being generated),
for image tokens ``j``:

    z_j <- z_j + alpha |z_j|   for "local" tokens   (alpha = 0.7)
    z_j <- z_j + beta |z_j|    for "summary" tokens (beta = 0.3)

in layers 2-31 of LLaVA-1.5 (both boosts in that order, as in the code, so a token in both sets gets both).
The token sets come from the vision tower's CLS attention (:func:`paint_token_sets`): "local" = the top 25% of
image tokens by CLS attention (summed over heads) in the first layer, "summary" = the top ``k`` by CLS attention
in the penultimate layer, ``k`` the number of upper outliers (``> Q3 + 1.5 IQR``) there, and "local" loses the
summary tokens. Masked logits are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..call import AttentionCall
from ..edit_base import Edit
from ._common import Rows, head_mask, image_positions, indices, number, row_mask, rows_arg


def paint_token_sets(first_layer_cls: Tensor, penultimate_cls: Tensor, local_fraction: float = 0.25,
                     iqr_factor: float = 1.5) -> tuple[Tensor, Tensor]:
    """PAINT's "local" and "summary" image tokens from the vision tower's CLS attention.

    Args:
        first_layer_cls: CLS-row attention to the ``n`` image tokens in the vision tower's first layer, ``(n,)`` or
            ``(heads, n)`` (summed over heads).
        penultimate_cls: the same in the penultimate layer.
        local_fraction: share of image tokens taken as "local" before removing summary tokens (0.25).
        iqr_factor: outliers are above ``Q3 + iqr_factor (Q3 - Q1)`` (1.5).

    Returns:
        ``(local, summary)``: int64 indices into the image tokens.
    """
    first = _cls_row(first_layer_cls, "first_layer_cls")
    last = _cls_row(penultimate_cls, "penultimate_cls")
    if first.shape != last.shape:
        raise ValueError(f"first_layer_cls and penultimate_cls must cover the same image tokens, got {first.shape[0]}"
                         f" and {last.shape[0]}")
    number(local_fraction, "local_fraction", 0.0, 1.0)
    number(iqr_factor, "iqr_factor", 0.0)
    n = first.shape[0]
    q1, q3 = torch.quantile(last.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    outliers = int((last.double() > q3 + iqr_factor * (q3 - q1)).sum())
    summary = torch.topk(last, outliers).indices
    local = torch.topk(first, int(n * local_fraction)).indices
    local = local[~torch.isin(local, summary)]
    return local, summary


def _cls_row(attention: Tensor, name: str) -> Tensor:
    if not isinstance(attention, Tensor) or not attention.is_floating_point() or attention.dim() not in (1, 2):
        got = f"{attention.dtype} {tuple(attention.shape)}" if isinstance(attention, Tensor) else type(attention)
        raise TypeError(f"{name} must be a float tensor (n,) or (heads, n) of CLS attention, got {got}")
    return attention.sum(0) if attention.dim() == 2 else attention


class ImbalancedAttentionBoost(Edit):
    """PAINT's logit boost ``z_j += alpha |z_j|`` (local) and ``z_j += beta |z_j|`` (summary) on chosen rows.

    Args:
        local_tokens: indices into the image tokens (``call.image_tokens`` order) boosted by ``alpha``.
        summary_tokens: indices into the image tokens boosted by ``beta``.
        alpha: local boost (0.7 in the paper); 0 = no change.
        beta: summary boost (0.3 in the paper); 0 = no change.
        rows: query rows edited: ``"last"`` (the generated token, as in the paper), ``"all"`` or positions.
        layers, heads: where the edit acts (the paper: layers 2-31 of LLaVA-1.5-7B, all heads).
    """

    def __init__(self, local_tokens: Sequence[int] | Tensor, summary_tokens: Sequence[int] | Tensor = (), *,
                 alpha: float = 0.7, beta: float = 0.3, rows: Rows = "last", layers: Sequence[int] | None = None,
                 heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        self.local_tokens = indices(local_tokens, "local_tokens", allow_empty=True)
        self.summary_tokens = indices(summary_tokens, "summary_tokens", allow_empty=True)
        self.alpha = number(alpha, "alpha")
        self.beta = number(beta, "beta")
        self.rows = rows_arg(rows)

    def edit_logits(self, logits: Tensor, call: AttentionCall) -> Tensor:
        image = image_positions(call, "ImbalancedAttentionBoost")
        where = (row_mask(call, self.rows)[:, None]
                 & head_mask(self.heads, logits.shape[1], logits.device, "ImbalancedAttentionBoost")[:, None, None])
        visible = logits > torch.finfo(logits.dtype).min / 2
        out = logits
        for name, tokens, gain in (("local_tokens", self.local_tokens, self.alpha),
                                   ("summary_tokens", self.summary_tokens, self.beta)):
            if tokens.numel() and int(tokens.max()) >= image.numel():
                raise ValueError(f"ImbalancedAttentionBoost: {name} {tokens[tokens >= image.numel()].tolist()} out "
                                 f"of range for the {image.numel()} image tokens of layer {call.layer}")
            chosen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            chosen[image[tokens.to(image.device)]] = True
            out = torch.where(where & chosen & visible, out + gain * out.abs(), out)
        return out
