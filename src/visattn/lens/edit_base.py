"""``Edit``: the base of every training-free intervention the lens applies inside attention.

An edit acts on chosen layers and heads through hooks called, in this order, by
:func:`visattn.lens.compute.lens_attention` for every attention call of a layer it applies to:

1. ``edit_qkv(call) -> call``: replace q, k, v (ConsistEdit);
2. ``edit_logits(logits, call) -> logits``: pre-softmax ``(B, heads, Nq, Nk)`` (PAINT);
3. ``edit_probs(probs, call) -> probs``: post-softmax (VAR, SoftPAG, GIFT, LSSAR re-weighting, affine scaling);
4. ``edit_output(out, call) -> out``: per-head outputs before the output projection ``(B, heads, Nq, dv)`` (VHR).

Each hook returns a tensor of the same shape and by default returns its input. ``restrict(new, old)`` keeps
the edit to the selected heads. ``prepare(run)`` lets an edit run extra forward passes first (VHR's text-only pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .call import AttentionCall


class Edit:
    """Base class of lens edits. ``layers`` / ``heads``: indices it acts on (None = all)."""

    def __init__(self, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None) -> None:
        self.layers = _indices(layers, "layers")
        self.heads = _indices(heads, "heads")

    def applies_to(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def check(self, num_layers: int, num_heads: int) -> None:
        """Raise ``ValueError`` naming the bad index if the edit's layers or heads do not exist in the model."""
        for name, chosen, limit in (("layers", self.layers, num_layers), ("heads", self.heads, num_heads)):
            bad = [i for i in (chosen or ()) if not 0 <= i < limit]
            if bad:
                raise ValueError(f"{type(self).__name__}: {name} {bad} out of range; the model has {limit} {name}")

    def prepare(self, run: Callable[..., Any]) -> None:
        """Called once before the edited forward; ``run(**overrides)`` runs the model (for extra passes)."""

    def edit_qkv(self, call: AttentionCall) -> AttentionCall:
        return call

    def edit_logits(self, logits: Tensor, call: AttentionCall) -> Tensor:
        return logits

    def edit_probs(self, probs: Tensor, call: AttentionCall) -> Tensor:
        return probs

    def edit_output(self, out: Tensor, call: AttentionCall) -> Tensor:
        return out

    def restrict(self, new: Tensor, old: Tensor) -> Tensor:
        """``new`` on the selected heads (dim 1), ``old`` elsewhere."""
        if self.heads is None:
            return new
        self.check(num_layers=max(self.layers or (0,)) + 1, num_heads=old.shape[1])
        keep = torch.zeros(old.shape[1], dtype=torch.bool, device=old.device)
        keep[list(self.heads)] = True
        return torch.where(keep.view(1, -1, *([1] * (old.dim() - 2))), new, old)


def _indices(values: Sequence[int] | None, name: str) -> tuple[int, ...] | None:
    if values is None:
        return None
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must be a sequence of ints or None, got {values!r}")
    return tuple(values)
