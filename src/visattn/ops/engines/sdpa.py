"""``scaled_dot_product_attention`` as every engine calls it: with NaN queries kept NaN.

PyTorch's CPU flash kernel (seen in 2.14) returns finite values for a query row holding a NaN when the row attends
fewer than ``NAN_SAFE_KEYS`` keys, where the naive reference (and the same kernel with more keys) gives NaN. The
engines hold NaN to the reference's semantics (docs/kernels.md, "Numerics"), so for such calls on the CPU the rows
whose query holds a NaN are set to NaN afterwards: one pass over ``q`` and the output, only where keys are few.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["NAN_SAFE_KEYS", "sdpa"]

NAN_SAFE_KEYS = 16


def sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
         is_causal: bool = False, scale: float | None = None) -> Tensor:
    """``F.scaled_dot_product_attention`` whose rows are NaN where their query holds a NaN (see the module
    docstring)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                         scale=scale)
    if q.device.type == "cpu" and k.shape[-2] < NAN_SAFE_KEYS:
        out = out.masked_fill(q.isnan().any(-1, keepdim=True), float("nan"))
    return out
