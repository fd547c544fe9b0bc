"""LSSAR re-weighting applied at inference: sharpen attention by cutting every weight at or below uniform.

Gao & Spratling, "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models",
arXiv 2501.13428. On the post-softmax weights of a trained model,

    A_ij <- relu(A_ij n_i - O_i)^p / sum_l relu(A_il n_i - O_i)^p,   O_i = 0 for the first 3 rows, else 1,

with ``n_i`` the number of keys row ``i`` sees (read from the call's mask). The formula is
:func:`visattn.ops.reweight_attention`; a row whose weights are all at or below uniform becomes 0. ``p = 1`` with
``offset_rows >= N`` changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...ops import reweight_attention
from ...ops.reweight import OFFSET_ROWS, check_offset_rows, check_power
from ..call import AttentionCall
from ..edit_base import Edit
from ._common import head_mask, visible_keys


class AttentionReweighting(Edit):
    """LSSAR re-weighting of the probabilities of chosen layers and heads.

    Args:
        p: sharpening power ``>= 1`` (the paper: 3 at 1K tokens, 15 for long contexts).
        offset_rows: leading rows with ``O_i = 0`` (3 in the paper).
        layers, heads: where the edit acts.
    """

    def __init__(self, p: float = 3.0, *, offset_rows: int = OFFSET_ROWS, layers: Sequence[int] | None = None,
                 heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        self.p = check_power(p)
        self.offset_rows = check_offset_rows(offset_rows)

    def edit_probs(self, probs: Tensor, call: AttentionCall) -> Tensor:
        if probs.shape[-2] != probs.shape[-1]:
            raise ValueError(f"AttentionReweighting needs the full square attention (its offsets count rows from the "
                             f"first token); layer {call.layer} has {probs.shape[-2]} queries for {probs.shape[-1]} "
                             "keys (decoding with a KV cache): run without the cache")
        visible = visible_keys(call, probs).sum(-1, keepdim=True).to(probs.dtype)
        new = reweight_attention(probs, p=self.p, num_visible=visible, offset_rows=self.offset_rows)
        heads = head_mask(self.heads, probs.shape[1], probs.device, "AttentionReweighting")
        return torch.where(heads[:, None, None], new, probs)
