"""``capture``: record what attention does inside a model, per layer, while the model runs.

::

    with visattn.lens.capture(model, layers=[0, 11], what=("probs", "q", "k")) as rec:
        model(x)
    rec.get("probs", 11).tensor          # (batch, head, query, key), post-softmax
    rec.get("probs", 11).to_numpy()

What can be recorded (a :class:`Record` per layer and attention call, dims named):

- ``"probs"``: post-softmax attention ``(batch, head, query, key)``; ``"logits"``: pre-softmax ``q k^T * scale +
  bias`` (``-inf`` where masked), same dims; ``"head_outputs"``: per-head outputs before the output projection
  ``(batch, head, query, channel)``;
- ``"q"`` ``(batch, head, query, channel)``, ``"k"`` and ``"v"`` ``(batch, head, key, channel)``: after norms and
  rotary embeddings, grouped-query keys repeated per head;
- ``"hidden"``: the hidden state entering the layer (the input of its transformer block) ``(batch, token,
  channel)``.

Only the selected layers are routed through the explicit computation (the others keep their fused path), which
bounds memory. Each attention call appends one entry per layer: repeated forwards (and generation steps) give a
list per layer, oldest first; a layer that calls attention once per image (Qwen2-VL's vision tower) appends one
entry per image. Records are detached unless ``detach=False`` (gradient rollout needs the graph). Capture
leaves the model's outputs unchanged up to floating-point rounding (the explicit path replaces the fused one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .adapters import WHAT, Attachment, LayerInfo
from .call import AttentionCall
from .compute import pushed
from .layout import TokenLayout, flatten_hidden

DIMS = {
    "probs": ("batch", "head", "query", "key"),
    "logits": ("batch", "head", "query", "key"),
    "head_outputs": ("batch", "head", "query", "channel"),
    "q": ("batch", "head", "query", "channel"),
    "k": ("batch", "head", "key", "channel"),
    "v": ("batch", "head", "key", "channel"),
    "hidden": ("batch", "token", "channel"),
}


@dataclass(frozen=True)
class Record:
    """One recorded tensor with named dims (e.g. ``("batch", "head", "query", "key")``)."""

    tensor: Tensor
    dims: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.tensor.dim() != len(self.dims):
            raise ValueError(f"a Record with dims {self.dims} needs a {len(self.dims)}-D tensor, "
                             f"got shape {tuple(self.tensor.shape)}")

    @property
    def shape(self) -> dict[str, int]:
        """Size per named dim."""
        return dict(zip(self.dims, self.tensor.shape, strict=True))

    def axis(self, dim: str) -> int:
        """Position of the named dim, or ``ValueError`` listing the dims."""
        if dim not in self.dims:
            raise ValueError(f"dim {dim!r} not in {self.dims}")
        return self.dims.index(dim)

    def to_numpy(self) -> np.ndarray:
        """The tensor as a numpy array on the CPU (bfloat16 as float32, which numpy lacks)."""
        tensor = self.tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()


class Recording:
    """What :func:`capture` recorded: per selected layer, one ``{what: Record}`` entry per attention call."""

    def __init__(self, infos: Sequence[LayerInfo], layers: Sequence[int], what: Sequence[str]) -> None:
        self.infos = tuple(infos)
        self.layers = tuple(layers)
        self.what = tuple(what)
        self.entries: dict[int, list[dict[str, Record]]] = {i: [] for i in self.layers}
        self.layouts: dict[int, list[TokenLayout | None]] = {i: [] for i in self.layers}

    def __repr__(self) -> str:
        calls = {i: len(e) for i, e in self.entries.items()}
        return f"Recording(what={self.what}, calls per layer={calls})"

    @property
    def names(self) -> dict[int, str]:
        """Qualified module name of each selected layer."""
        return {i: self.infos[i].name for i in self.layers}

    def calls(self, layer: int) -> list[dict[str, Record]]:
        """All entries of ``layer``, oldest first."""
        self._check(layer=layer)
        return self.entries[layer]

    def get(self, what: str, layer: int, call: int = -1) -> Record:
        """The record of ``what`` at ``layer`` from attention call ``call`` (default: the latest)."""
        self._check(what, layer)
        return self._call(self.entries[layer], layer, call)[what]

    def layout(self, layer: int, call: int = -1) -> TokenLayout | None:
        """Where the grid queries and keys of ``layer``'s attention call ``call`` lie on its feature map (windows,
        blocks, halos), or None where the adapter does not know."""
        self._check(layer=layer)
        return self._call(self.layouts[layer], layer, call)

    def _call(self, per_call: list[Any], layer: int, call: int) -> Any:
        """``per_call[call]``, or ``ValueError`` when the layer has recorded nothing or ``call`` is out of range."""
        if not per_call:
            raise ValueError(f"nothing recorded at layer {layer} ({self.infos[layer].name!r}) yet: run the model "
                             f"inside the capture context")
        if not -len(per_call) <= call < len(per_call):
            raise ValueError(f"call {call} out of range: layer {layer} has {len(per_call)} recorded calls")
        return per_call[call]

    def all(self, what: str, layer: int) -> list[Record]:
        """The records of ``what`` at ``layer`` from every call, oldest first."""
        self._check(what, layer)
        return [entry[what] for entry in self.entries[layer]]

    def stacked(self, what: str, layer: int) -> Record:
        """Every call's record of ``what`` at ``layer`` concatenated along ``batch`` (shapes must agree)."""
        records = self.all(what, layer)
        if not records:
            return self.get(what, layer)
        shapes = {tuple(r.tensor.shape[1:]) for r in records}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack {what!r} at layer {layer}: the calls have different shapes {sorted(shapes)}"
                             f" (e.g. generation steps); use all() instead")
        return Record(torch.cat([r.tensor for r in records]), records[0].dims)

    def clear(self) -> None:
        """Forget every entry (keep recording into the same object)."""
        for entries in self.entries.values():
            entries.clear()
        for layouts in self.layouts.values():
            layouts.clear()

    def _check(self, what: str | None = None, layer: int | None = None) -> None:
        if what is not None and what not in self.what:
            raise ValueError(f"{what!r} was not captured; this recording has what={self.what}")
        if layer is not None and layer not in self.entries:
            raise ValueError(f"layer {layer!r} was not captured; this recording has layers {self.layers}")

    def record(self, call: AttentionCall, tensors: dict[str, Tensor], detach: bool) -> None:
        """The recorder: keep what was asked for from one attention call of a selected layer."""
        if call.layer not in self.entries:
            return
        entry = {}
        for what in self.what:
            tensor = tensors.get(what) if what in ("probs", "logits", "head_outputs") else getattr(call, what)
            if tensor is None:
                raise ValueError(f"layer {call.layer} ({call.name!r}) did not provide {what!r} in this call")
            if what == "hidden":
                tensor = flatten_hidden(tensor, None if call.layout is None else call.layout.grid)
            entry[what] = Record(tensor.detach() if detach else tensor, DIMS[what])
        self.entries[call.layer].append(entry)
        self.layouts[call.layer].append(call.layout)


def check_what(what: str | Sequence[str]) -> tuple[str, ...]:
    """``what`` as a tuple of known names, or ``ValueError`` naming the unknown ones and the valid names."""
    names = (what,) if isinstance(what, str) else what
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"what must be a name or a sequence of names from {WHAT}, got {what!r}")
    unknown = [n for n in names if n not in WHAT]
    if unknown:
        raise ValueError(f"what has unknown names {unknown}; valid names are {WHAT}")
    if not names:
        raise ValueError(f"what must name at least one of {WHAT}")
    return tuple(dict.fromkeys(names))


def select_layers(attachment: Attachment, layers: int | Sequence[int] | None) -> tuple[int, ...]:
    """The chosen layer indices (all when None), checked against the model's layers."""
    if layers is None:
        return tuple(range(len(attachment)))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = (layers,)
    if not isinstance(layers, Sequence) or isinstance(layers, str):
        raise TypeError(f"layers must be an int, a sequence of ints or None, got {layers!r}")
    return attachment.check_indices(layers, "layers")


@contextlib.contextmanager
def capture(model: nn.Module, layers: int | Sequence[int] | None = None, what: str | Sequence[str] = ("probs",),
            *, within: str | None = None, detach: bool = True) -> Iterator[Recording]:
    """Record ``what`` at the attention ``layers`` of ``model`` while the ``with`` block runs it.

    Args:
        model: a visattn module, a timm ViT-family, Swin (V1/V2), MaxViT or CoAtNet model, or a Hugging Face model
            (ViT, CLIP, LLaVA, Qwen2-VL, ...).
        layers: indices into the model's attention layers in module order (see
            :func:`visattn.lens.attention_layers`); None = all.
        what: names from ``("probs", "logits", "head_outputs", "hidden", "q", "k", "v")``.
        within: number only the layers under this qualified module name (e.g. ``"model.language_model"`` of a
            LLaVA model, so that layer 0 is the language model's first layer).
        detach: store detached tensors (default); False keeps the autograd graph.

    Yields:
        a :class:`Recording`, filled as the model runs. Capture nested in :func:`visattn.lens.edit` sees the
        edited attention.
    """
    names = check_what(what)
    attachment = Attachment(model, within)
    chosen = select_layers(attachment, layers)
    for i in chosen:
        missing = [n for n in names if n not in attachment.infos[i].provides]
        if missing:
            info = attachment.infos[i]
            raise ValueError(f"layer {i} ({info.name!r}, {info.kind}) cannot provide {missing}; it provides "
                             f"{sorted(info.provides)}")
    recording = Recording(attachment.infos, chosen, names)

    def recorder(call: AttentionCall, tensors: dict[str, Tensor]) -> None:
        recording.record(call, tensors, detach)

    with pushed(recorders=[recorder], owner=id(model)), attachment.routed(chosen):
        yield recording
