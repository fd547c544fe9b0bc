"""AVAR-style modulation: more attention to the image, less to the system prompt, rows renormalised.

"From Narrow to Panoramic Vision: Attention-Guided Cold-Start Reshapes Multimodal Reasoning", arXiv 2603.03825
(ICLR 2026; code: lrlbbzl/Qwen-AVAR). The paper's Visual Attention Score
``VAS = sum_{k in image} A_k / sum_{k in system} A_k`` (:mod:`visattn.lens.metrics.vas`) rewards attention to the
image over attention to the system prompt; its training-free variant shifts attention the same way at inference:

    A_ij <- A_ij * (visual_factor if j is an image token; system_factor if j is a system token; 1 otherwise),

then each row is rescaled to its old sum. The paper publishes no factors, so both are required arguments.
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


class VisualSystemModulation(Edit):
    """Scale attention to image tokens by ``visual_factor`` and to system tokens by ``system_factor``.

    Args:
        system_tokens: positions of the system-prompt tokens in the sequence.
        visual_factor: factor on image-token attention (> 1 boosts).
        system_factor: factor on system-token attention (< 1 suppresses).
        rows: query rows edited (``"all"``, ``"last"`` or positions).
        layers, heads: where the edit acts.
    """

    def __init__(self, system_tokens: Sequence[int] | Tensor, *, visual_factor: float, system_factor: float,
                 rows: Rows = "all", layers: Sequence[int] | None = None,
                 heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        self.system_tokens = indices(system_tokens, "system_tokens")
        self.visual_factor = number(visual_factor, "visual_factor", 0.0)
        self.system_factor = number(system_factor, "system_factor", 0.0)
        self.rows = rows_arg(rows)

    def edit_probs(self, probs: Tensor, call: AttentionCall) -> Tensor:
        nk = probs.shape[-1]
        visual = key_mask(image_positions(call, "VisualSystemModulation"), nk, probs.device)
        system = key_mask(sequence_positions(self.system_tokens, call, "system_tokens"), nk, probs.device)
        if bool((visual & system).any()):
            raise ValueError(f"VisualSystemModulation: system_tokens overlap the image tokens at "
                             f"{(visual & system).nonzero().reshape(-1).tolist()}")
        factor = torch.ones(nk, dtype=probs.dtype, device=probs.device)
        factor[visual] = self.visual_factor
        factor[system] = self.system_factor
        new = renormalize(probs * factor, probs)
        where = row_mask(call, self.rows)[:, None] & head_mask(self.heads, probs.shape[1], probs.device,
                                                                  "VisualSystemModulation")[:, None, None]
        return torch.where(where, new, probs)
