"""``lens_attention``: attention computed explicitly so it can be recorded and edited.

``logits = q k^T * scale + bias``; ``probs = softmax(logits)`` (rows with no visible key give 0);
``out = probs v``. Active edits are applied in hook order (see :mod:`visattn.lens.edit_base`) and active
recorders receive what they asked for. Adapters call this only while a lens context is active; otherwise models
run their own fused attention untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .call import AttentionCall
from .edit_base import Edit

Recorder = Callable[[AttentionCall, dict[str, Tensor]], None]


@dataclass
class LensState:
    """What is active now: edits and recorders (a stack of contexts, innermost last)."""

    edits: list[Edit] = field(default_factory=list)
    recorders: list[Recorder] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.edits or self.recorders)


STATE = LensState()


def lens_attention(call: AttentionCall) -> tuple[Tensor, Tensor]:
    """Explicit attention for ``call`` with the active edits and recorders; returns ``(out, probs)``."""
    edits = [e for e in STATE.edits if e.applies_to(call.layer)]
    for edit in edits:
        call = edit.edit_qkv(call)
    logits = (call.q @ call.k.transpose(-2, -1)) * call.scale
    if call.bias is not None:
        logits = logits + call.bias.to(logits.dtype)
    for edit in edits:
        logits = edit.edit_logits(logits, call)
    empty = torch.isneginf(logits.amax(dim=-1, keepdim=True))
    probs = torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    for edit in edits:
        probs = edit.edit_probs(probs, call)
    out = probs.to(call.v.dtype) @ call.v
    for edit in edits:
        out = edit.edit_output(out, call)
    for record in STATE.recorders:
        record(call, {"logits": logits, "probs": probs, "head_outputs": out})
    return out, probs
