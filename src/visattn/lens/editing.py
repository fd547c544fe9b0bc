"""``edit``: apply training-free attention edits (:class:`~visattn.lens.Edit`) to a model for a ``with`` block.

::

    with visattn.lens.edit(model, [ScaleHeadLogits(layers=[0], heads=[1])]):
        out = model(x)

On entry each edit is checked against the model (``Edit.check(num_layers, num_heads)``: its layers must exist and
its heads must exist in every layer it acts on; the layers must run explicit attention), then ``edit.prepare(run)``
is called once, in list order, before any of this context's edits is active. ``run`` is a :class:`ModelRun`: it
runs the model on the ``inputs`` given to :func:`edit`, updated by keyword overrides (``run(pixel_values=None,
input_ids=text_ids)`` is VHR's text-only pass), under ``torch.no_grad()``, and can capture while doing so
(``run.capture(what=("head_outputs",), pixel_values=None)``). Then the layers the edits act on are routed through
the lens and the edits pushed onto the current context's ``STATE.edits`` (acting on this model only; other threads
and asyncio tasks do not see them); on exit, normal or not, everything is restored. Capture nested inside ``edit``
sees the edited attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .adapters import Attachment, LayerInfo
from .capture import Recording, capture
from .compute import pushed
from .edit_base import Edit


class ModelRun:
    """Runs the model for an edit's ``prepare``: ``run(**overrides)`` is ``model(**{**inputs, **overrides})``.

    Attributes:
        model: the model being edited.
        inputs: the keyword inputs given to :func:`edit` (read-only), or None.
        layers: the model's attention layers as the lens numbers them.
    """

    def __init__(self, model: nn.Module, inputs: Mapping[str, Any] | None, layers: Sequence[LayerInfo],
                 within: str | None, edit: Edit) -> None:
        self.model = model
        self.inputs = MappingProxyType(dict(inputs)) if inputs is not None else None
        self.layers = tuple(layers)
        self.within = within
        self._edit = edit

    def __call__(self, **overrides: Any) -> Any:
        if self.inputs is None:
            raise ValueError(f"{type(self._edit).__name__}.prepare runs the model: pass the model's keyword inputs "
                             f"to visattn.lens.edit(model, edits, inputs={{...}})")
        with torch.no_grad():
            return self.model(**{**self.inputs, **overrides})

    def capture(self, what: str | Sequence[str] = ("probs",), layers: int | Sequence[int] | None = None,
                **overrides: Any) -> tuple[Any, Recording]:
        """Run the model (as ``run(**overrides)``) while capturing ``what`` at ``layers``; return both."""
        with capture(self.model, layers, what, within=self.within) as recording:
            output = self(**overrides)
        return output, recording


def check_edits(attachment: Attachment, edits: Sequence[Edit]) -> None:
    """Each edit's layers and heads exist in the model, and its layers run explicit attention."""
    infos = attachment.infos
    for edit in edits:
        layers = range(len(infos)) if edit.layers is None else [i for i in edit.layers if 0 <= i < len(infos)]
        heads = [infos[i].num_heads for i in layers if infos[i].num_heads is not None]
        edit.check(len(infos), min(heads) if heads else max(edit.heads or (0,)) + 1)
        for i in layers:
            if not infos[i].editable:
                raise ValueError(
                    f"{type(edit).__name__} acts on layer {i} ({infos[i].name!r}), whose {infos[i].kind} does not "
                    f"compute explicit softmax attention; the lens can only observe it (attention_weights), not "
                    f"edit it: choose other layers"
                )


def _as_edits(edits: Edit | Sequence[Edit]) -> list[Edit]:
    if isinstance(edits, Edit):
        return [edits]
    if not isinstance(edits, Sequence) or not all(isinstance(e, Edit) for e in edits):
        raise TypeError(f"edits must be a visattn.lens.Edit or a sequence of them, got {edits!r}")
    return list(edits)


@contextlib.contextmanager
def edit(model: nn.Module, edits: Edit | Sequence[Edit], *, inputs: Mapping[str, Any] | None = None,
         within: str | None = None) -> Iterator[list[Edit]]:
    """Apply ``edits`` to the attention of ``model`` while the ``with`` block runs it.

    Args:
        model: a visattn module, a timm ViT-family model or a Hugging Face model.
        edits: :class:`~visattn.lens.Edit` objects; their hooks run in list order at every layer they act on.
        inputs: keyword inputs of the model, for edits whose ``prepare`` runs it (see :class:`ModelRun`).
        within: number only the layers under this qualified module name (as in :func:`visattn.lens.capture`).

    Yields:
        the list of active edits.
    """
    edits = _as_edits(edits)
    if inputs is not None and not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a mapping of the model's keyword inputs or None, got {type(inputs).__name__}")
    attachment = Attachment(model, within)
    check_edits(attachment, edits)
    for item in edits:
        item.prepare(ModelRun(model, inputs, attachment.infos, within, item))
    routed = set()
    for item in edits:
        routed.update(range(len(attachment)) if item.layers is None else item.layers)
    with attachment.routed(routed), pushed(edits=edits, owner=id(model)):
        yield edits
