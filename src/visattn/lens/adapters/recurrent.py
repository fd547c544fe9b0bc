"""Shared blocks applied at several depth steps: one lens layer per application.

Raptor (Jacobs, Fel, Hakim et al., "Block-Recurrent Dynamics in Vision Transformers", arXiv 2512.19941) runs each
of its ``k`` shared blocks once per layer of its phase, ``x_l = B_{p(l)}(x_{l-1}, t = l)``: ``model.blocks`` holds
``L`` :class:`~visattn.models.raptor.RecurrentStep` modules that call the ``k`` blocks of
``model.recurrent_blocks``. A lens keyed by module would see ``k`` attention layers called several times each; the
lens instead *unrolls* the recurrence. Each step module that runs a shared block gets the attention layers found
inside that block as layers of its own, in the step's place in module order (so a Raptor of depth ``L`` has ``L``
lens layers, numbered like its teacher's), named ``<attention module>@t<time>`` (e.g.
``recurrent_blocks.0.attn@t3``: the shared attention of phase 0 as the third step applies it).

While a step layer is routed, the step module's instance ``forward`` is wrapped so that the shared attention is
routed (as the layer of this step, through its own family's adapter) for the duration of that step's call only;
the other applications of the same module keep their own forward unless they are routed too. The step module is
the block whose input is the ``hidden`` state of the layer.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from .base import ROUTE_ATTR, Layer, Route, carrying, patch_forward

RAPTOR_MODULE = "visattn.models.raptor"


def shared_block(module: nn.Module) -> tuple[nn.Module, str] | None:
    """``(shared module, label)`` if ``module`` is a step that applies a shared module (Raptor's ``RecurrentStep``:
    its block, label ``t<time>``), else None."""
    raptor = sys.modules.get(RAPTOR_MODULE)
    if raptor is None or not isinstance(module, raptor.RecurrentStep):
        return None
    return module.block, f"t{module.time}"


class StepLayer(Layer):
    """The attention layer ``base`` (found inside a shared module) as the step module ``step`` applies it.

    ``name`` is ``<base.name>@<label>``; ``path`` is the shared attention module's (so its submodules are not
    claimed again); ``block`` is the step module, whose input is the state entering this application.
    """

    def __init__(self, base: Layer, step_name: str, step: nn.Module, label: str) -> None:
        super().__init__(f"{base.name}@{label}", step, step, base.num_heads, kind=base.kind, provides=base.provides,
                         editable=base.editable, tower=base.tower, prefix=base.prefix, path=base.path,
                         block_path=step_name)
        self.family = base.family
        self.base = base

    @contextlib.contextmanager
    def routed(self, route: Route) -> Iterator[None]:
        """Route the shared attention as this layer whenever the step module runs, for the duration (the step
        carries the route per shared attention, so that another lens numbering is refused on entry)."""
        inner = Route(route.info, route.owner, route.state, self.base)
        step = self.module
        previous = step.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            with self.base.routed(inner):
                return previous(*args, **kwargs)

        with carrying(step, route, self.name, f"{ROUTE_ATTR}@{self.base.path}"):
            undo: Callable[[], None] = patch_forward(step, forward)
            try:
                yield
            finally:
                undo()
