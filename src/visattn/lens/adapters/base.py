"""What every lens adapter shares: a hookable attention layer, the per-forward state, and scoped dispatch.

An adapter finds the attention layers of one model family and, while a lens context is active, routes each
selected layer's attention through :func:`visattn.lens.compute.lens_attention`. A routed layer carries a
:class:`Route` (on the module, so nested contexts stack and restore it); the route says which layer of which model
it is and where the hidden state, token grid and image tokens of the current forward are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..call import AttentionCall
from ..compute import STATE, lens_attention, pushed
from ..layout import TokenLayout, probe_method, probed_layout

WHAT = ("probs", "logits", "head_outputs", "hidden", "q", "k", "v")
"""Everything the lens can record at a layer that runs explicit attention."""

ROUTE_ATTR = "_visattn_lens_route"


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer as the lens numbers it.

    Attributes:
        index: position in the model's attention layers, in module order (0-based).
        name: qualified module name in the model.
        family: ``"visattn"``, ``"timm"`` or ``"huggingface"``.
        kind: class name of the module (for visattn: of the token mixer).
        num_heads: attention heads, or None where the module does not say.
        provides: what :func:`visattn.lens.capture` can record here (a subset of :data:`WHAT`).
        editable: the layer runs through ``lens_attention``, so edits can act on it.
    """

    index: int
    name: str
    family: str
    kind: str
    num_heads: int | None
    provides: frozenset[str]
    editable: bool


@dataclass
class ForwardState:
    """What the model-level hooks learnt about the forward in progress."""

    hidden: dict[int, Tensor] = field(default_factory=dict)
    grids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """patch grid of the last image, per vision tower (qualified name of the tower)"""
    image_tokens: Tensor | None = None


@dataclass(frozen=True)
class Route:
    """A routed layer: its numbering, the model the lens is attached to, and the forward state it reads."""

    info: LayerInfo
    owner: int
    state: ForwardState
    layer: Layer

    @property
    def hidden(self) -> Tensor | None:
        return self.state.hidden.get(self.info.index)


class Layer:
    """An attention layer an adapter can route; subclasses that must patch the module override :meth:`patch`.

    ``name`` is the layer's name, ``path`` the qualified name of ``module`` (they differ for visattn, where
    ``module`` is the mixer of the named ``Attention``). ``module`` carries the route; ``block`` is the module whose
    input is the hidden state entering the layer (the transformer block around the attention), or None where there
    is none; ``tower`` names the enclosing vision model whose patch grid lays out the tokens, and ``prefix`` is its
    number of prefix tokens, where known. ``block_path`` is the qualified name of ``block`` (default: the parent of
    ``name``); ``layouts`` caches the token layouts of the block's windows per map size.
    """

    family: str = ""

    def __init__(self, name: str, module: nn.Module, block: nn.Module | None, num_heads: int | None,
                 kind: str | None = None, provides: frozenset[str] = frozenset(WHAT), editable: bool = True,
                 tower: str | None = None, prefix: int | None = None, path: str | None = None,
                 block_path: str | None = None) -> None:
        self.name = name
        self.path = name if path is None else path
        self.module = module
        self.block = block
        self.num_heads = num_heads
        self.kind = kind or type(module).__name__
        self.provides = provides
        self.editable = editable
        self.tower = tower
        self.prefix = prefix
        self.block_path = block_path if block_path is not None else (parent_name(self.name) or "")
        self.layouts: dict[tuple[int, int], Any] = {}

    def info(self, index: int) -> LayerInfo:
        provides = self.provides if self.block is not None else self.provides - {"hidden"}
        return LayerInfo(index, self.name, self.family, self.kind, self.num_heads, provides, self.editable)

    @contextlib.contextmanager
    def routed(self, route: Route) -> Iterator[None]:
        """Route this layer through the lens for the duration; restore everything afterwards, even on error."""
        with carrying(self.module, route, self.name):
            undo = self.patch()
            try:
                yield
            finally:
                undo()

    def patch(self) -> Callable[[], None]:
        """Make the module call the lens while routed; return the function that undoes it."""
        return lambda: None


@contextlib.contextmanager
def carrying(holder: nn.Module, route: Route, name: str, attribute: str = ROUTE_ATTR) -> Iterator[None]:
    """``holder`` carries ``route`` in ``attribute`` for the duration (nested contexts stack and restore it);
    ``ValueError`` if it already carries the route of another lens numbering (``name`` is the layer's name)."""
    previous = holder.__dict__.get(attribute)
    if previous is not None and (previous.owner != route.owner or previous.info.index != route.info.index):
        raise ValueError(
            f"{name!r} is already routed by another lens context as layer {previous.info.index} of another "
            f"numbering; nest capture/edit contexts on the same model with the same `within`"
        )
    setattr(holder, attribute, route)
    try:
        yield
    finally:
        if previous is None:
            delattr(holder, attribute)
        else:
            setattr(holder, attribute, previous)


def probed_block_layout(layer: Layer, hidden: Tensor | None, channels_first: bool = False) -> TokenLayout | None:
    """The windows of ``layer``'s block on the map it received (``hidden``, channels-last unless
    ``channels_first``), from the block's own partition method run on coordinates
    (:func:`~visattn.lens.layout.probed_layout`, cached per map size), or None where the block has no such method."""
    method = probe_method(layer.block)
    if method is None or hidden is None or hidden.dim() != 4:
        return None
    grid = tuple(int(n) for n in (hidden.shape[2:] if channels_first else hidden.shape[1:3]))
    cached = layer.layouts.get(grid)
    if cached is None:
        inner = layer.path[len(layer.block_path) + 1:] if layer.block_path else layer.path
        cached = layer.layouts[grid] = probed_layout(layer.block, method, inner.split(".", 1)[0], grid,
                                                     channels_first)
    return cached


def route_of(module: nn.Module) -> Route | None:
    """The route of a routed module, else None."""
    return module.__dict__.get(ROUTE_ATTR)


def patch_forward(module: nn.Module, forward: Callable[..., Any], attribute: str = "forward") -> Callable[[], None]:
    """Replace ``module.forward`` (or another method, ``attribute``) on the instance; return the function that puts
    the previous one back."""
    had_own = attribute in module.__dict__
    previous = module.__dict__.get(attribute)
    setattr(module, attribute, forward)

    def undo() -> None:
        if had_own:
            setattr(module, attribute, previous)
        else:
            delattr(module, attribute)

    return undo


@contextlib.contextmanager
def scoped_state(owner: int) -> Iterator[None]:
    """Narrow the current context's lens state to the edits and recorders that act on the model ``owner``."""
    with pushed(only=owner):
        yield


def dispatch(call: AttentionCall, route: Route) -> tuple[Tensor, Tensor]:
    """``lens_attention(call)`` with the edits and recorders of the route's model."""
    with scoped_state(route.owner):
        return lens_attention(call)


def notify(call: AttentionCall, tensors: dict[str, Tensor], route: Route) -> None:
    """Feed the recorders of the route's model for a layer that does not run ``lens_attention``."""
    with scoped_state(route.owner):
        for record in STATE.recorders:
            record(call, tensors)


def additive_bias(attn_mask: Tensor | None, is_causal: bool, n_q: int, n_k: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor | None:
    """An additive bias (-inf = masked) from a bool (True = attend) or additive mask and/or a causal flag.

    The causal mask is aligned top-left like ``scaled_dot_product_attention(is_causal=True)``: query i sees
    keys ``j <= i``.
    """
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=dtype, device=device).masked_fill(~attn_mask, float("-inf"))
        else:
            bias = attn_mask.to(dtype)
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()
        causal_bias = torch.zeros(n_q, n_k, dtype=dtype, device=device).masked_fill(~causal, float("-inf"))
        bias = causal_bias if bias is None else bias + causal_bias
    return bias


def check_no_dropout(p: float, layer: str) -> None:
    """The lens computes attention without dropout: refuse a layer that would drop attention weights."""
    if p > 0.0:
        raise ValueError(
            f"layer {layer!r} drops attention weights (dropout p={p}) in training mode; the lens computes attention "
            f"without dropout: call model.eval() or set the attention dropout to 0"
        )


def first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """The hidden state a block receives: ``hidden_states=``/``x=`` or its first tensor argument."""
    for key in ("hidden_states", "x"):
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    return next((a for a in args if isinstance(a, Tensor)), None)


def parent_name(name: str) -> str | None:
    """``"blocks.0.attn" -> "blocks.0"``, ``"attn" -> ""``, ``"" -> None`` (the root has no parent)."""
    if not name:
        return None
    return name.rsplit(".", 1)[0] if "." in name else ""
