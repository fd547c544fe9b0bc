"""What the forward-table adapters share (:mod:`.visattn_layers`, :mod:`.timm_windowed`): each registers, per
attention class, a lens forward (the layer's computation with the attention handed to ``lens_attention`` through
:func:`attend`), routes a layer by putting that forward on the instance, and needs no model-level hook (its layers
learn their map from their input).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch import Tensor, nn

from ..call import AttentionCall
from ..layout import TokenLayout
from .base import ForwardState, Layer, check_no_dropout, dispatch, parent_name, patch_forward, route_of

LensForward = Callable[..., Tensor]
"""``forward(module, *args, **kwargs)``: the module's forward with its attention computed by the lens."""


class ForwardTable:
    """The lens forward of each supported attention class (:meth:`register`), and the adapter's entry points
    ``claim`` and ``model_hooks`` (:mod:`visattn.lens.adapters`).

    ``layer_class`` is the :class:`TableLayer` subclass naming the adapter's family; ``fallback(module)`` gives the
    forward of a module whose exact class is not registered (a subclass, a class imported lazily), or None."""

    def __init__(self, layer_class: type[TableLayer],
                 fallback: Callable[[nn.Module], LensForward | None] | None = None) -> None:
        self.layer_class = layer_class
        self.fallback = fallback
        self.forwards: dict[type, LensForward] = {}

    def register(self, cls: type) -> Callable[[LensForward], LensForward]:
        """Decorator: the decorated function is the lens forward of modules of exactly ``cls``."""
        def add(forward: LensForward) -> LensForward:
            self.forwards[cls] = forward
            return forward

        return add

    def lookup(self, module: nn.Module) -> LensForward | None:
        """The lens forward of ``module``: its class's, else the fallback's, else None (not supported)."""
        forward = self.forwards.get(type(module))
        if forward is None and self.fallback is not None:
            forward = self.fallback(module)
        return forward

    def claim(self, name: str, module: nn.Module, modules: dict[str, nn.Module]) -> TableLayer | None:
        """The lens layer for ``module`` if the table has a forward for it, else None; its block is its parent."""
        forward = self.lookup(module)
        if forward is None:
            return None
        block_name = parent_name(name)
        block = modules.get(block_name) if block_name is not None else None
        return self.layer_class(name, module, block, module.num_heads, forward=forward)

    @staticmethod
    @contextlib.contextmanager
    def model_hooks(model: nn.Module, layers: list[Layer], state: ForwardState) -> Iterator[None]:
        """These layers get their map from their input: no model-level hook is needed."""
        yield


class TableLayer(Layer):
    """A layer whose module runs ``forward`` (its lens forward) on the instance while routed."""

    def __init__(self, *args: object, forward: LensForward, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.forward = forward

    def patch(self) -> Callable[[], None]:
        module, forward = self.module, self.forward
        return patch_forward(module, lambda *args, **kwargs: forward(module, *args, **kwargs))


def attend(module: nn.Module, q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None,
           grid: tuple[int, ...] | None, layout: TokenLayout | None, dropout: float,
           hidden: Tensor | None = None) -> Tensor:
    """The routed ``module``'s attention by the lens: refuse attention dropout in training mode, build the call
    (``hidden`` defaults to the block's input, no prefix tokens) and dispatch it; returns the per-head output."""
    route = route_of(module)
    check_no_dropout(dropout if module.training else 0.0, route.info.name)
    call = AttentionCall(route.info.index, route.info.name, q, k, v, scale, bias,
                         hidden=route.hidden if hidden is None else hidden, grid=grid, layout=layout)
    out, _ = dispatch(call, route)
    return out
