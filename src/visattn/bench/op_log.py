"""The aten ops of one forward, each marked inside or outside chosen layers: to compare two implementations of a
model op for op (which copies, permutes or layout changes one runs that the other does not), outside what a
profiler's timings can show."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpLog", "logged_ops"]

LoggedOp = tuple[bool, str, str]
"""(inside one of the marked layers, the op's name, its tensor arguments' shapes and strides)."""


class OpLog(TorchDispatchMode):
    """A dispatch mode that records every aten op as a :data:`LoggedOp`; ``inside`` is set by the caller."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[LoggedOp] = []
        self.inside = False

    def __torch_dispatch__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None):
        out = func(*args, **(kwargs or {}))
        layout = [(tuple(a.shape), a.stride()) for a in args if isinstance(a, torch.Tensor)]
        self.ops.append((self.inside, func.overloadpacket.__name__, repr(layout)))
        return out


def logged_ops(model: nn.Module, inputs: torch.Tensor, marked: tuple[type[nn.Module], ...]) -> list[LoggedOp]:
    """The aten ops of one forward of ``model`` on ``inputs`` without gradients, each marked as run inside a module
    of one of the ``marked`` types or not (forward pre-hooks and hooks set the mark; the hooks are removed after)."""
    log = OpLog()
    hooks = []
    for module in model.modules():
        if isinstance(module, marked):
            hooks.append(module.register_forward_pre_hook(lambda *_: setattr(log, "inside", True)))
            hooks.append(module.register_forward_hook(lambda *_: setattr(log, "inside", False)))
    try:
        with torch.no_grad(), log:
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return log.ops
