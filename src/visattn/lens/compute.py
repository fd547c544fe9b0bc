"""``lens_attention``: attention computed explicitly so it can be recorded and edited.

``logits = q k^T * scale + bias``; ``probs = softmax(logits)`` (rows with no visible key give 0);
``out = probs v``. Active edits are applied in hook order (see :mod:`visattn.lens.edit_base`) and active
recorders receive what they asked for; both are those of the current context (thread or asyncio task, see
:func:`pushed`). Adapters call this only while a lens context is active; otherwise models
run their own fused attention untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .call import AttentionCall
from .edit_base import Edit

Recorder = Callable[[AttentionCall, dict[str, Tensor]], None]


@dataclass
class LensState:
    """What is active in one context: edits and recorders (innermost last), and the model each acts on.

    ``owners`` maps ``id(edit or recorder) -> id(model)`` for the entries a lens context installed (they act on that
    model only); entries without an owner act on every routed layer. An id here always belongs to an entry of this
    state's lists, which keep the object alive, so ids are never reused while they are looked up.
    """

    edits: list[Edit] = field(default_factory=list)
    recorders: list[Recorder] = field(default_factory=list)
    owners: dict[int, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.edits or self.recorders)


_CURRENT: ContextVar[LensState] = ContextVar("visattn_lens_state")


def current_state() -> LensState:
    """The lens state of the current context (thread or asyncio task); a fresh empty one the first time."""
    state = _CURRENT.get(None)
    if state is None:
        state = LensState()
        _CURRENT.set(state)
    return state


@contextlib.contextmanager
def pushed(edits: Sequence[Edit] = (), recorders: Sequence[Recorder] = (), owner: int | None = None,
           only: int | None = None) -> Iterator[LensState]:
    """A new state for the current context for the duration of the block: the current one's entries (only those
    acting on the model ``only`` when given) plus ``edits`` and ``recorders`` (owned by ``owner`` when given).

    The state is a copy set in a ``contextvars.ContextVar``, so threads and asyncio tasks that enter lens contexts
    at the same time never see, or undo, each other's entries; leaving the block restores the previous state.
    """
    base = current_state()
    keep = (lambda x: base.owners.get(id(x), only) == only) if only is not None else (lambda x: True)
    state = LensState([e for e in base.edits if keep(e)] + list(edits),
                      [r for r in base.recorders if keep(r)] + list(recorders),
                      {key: value for key, value in base.owners.items() if only is None or value == only})
    if owner is not None:
        state.owners.update((id(x), owner) for x in (*edits, *recorders))
    token = _CURRENT.set(state)
    try:
        yield state
    finally:
        _CURRENT.reset(token)


class StateView:
    """``STATE``: the current context's :class:`LensState` (``STATE.edits``, ``STATE.recorders``, ``STATE.owners``).

    Lens contexts install their entries with :func:`pushed`; appending to ``STATE.edits`` / ``STATE.recorders``
    directly affects the current context only (the low-level way used by tests and single-call helpers).
    """

    @property
    def edits(self) -> list[Edit]:
        return current_state().edits

    @property
    def recorders(self) -> list[Recorder]:
        return current_state().recorders

    @property
    def owners(self) -> dict[int, int]:
        return current_state().owners

    @property
    def active(self) -> bool:
        return current_state().active


STATE = StateView()


def lens_attention(call: AttentionCall) -> tuple[Tensor, Tensor]:
    """Explicit attention for ``call`` with the active edits and recorders; returns ``(out, probs)``."""
    state = current_state()
    edits = [e for e in state.edits if e.applies_to(call.layer)]
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
    for record in list(state.recorders):
        record(call, {"logits": logits, "probs": probs, "head_outputs": out})
    return out, probs
