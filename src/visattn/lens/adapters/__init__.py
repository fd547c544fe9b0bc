"""Lens adapters: find the attention layers of a model and route them through the lens while a context is active.

One walk over ``model.named_modules()`` asks each family (visattn token mixers, timm ViT attention, Hugging Face
attention-interface modules) whether a module is an attention layer it can route; layers are numbered in module
order. A module inside a claimed layer is not a layer of its own. A step module that applies a shared block
(Raptor's recurrence, :mod:`.recurrent`) contributes the attention layers of that block as layers of its own, one
per application, and the shared block is not walked again. :class:`Attachment` routes a chosen set of layers
(and installs the model-level hooks: hidden states, patch grids, image tokens, the Hugging Face implementation
switch) for the duration of a ``with`` block and restores everything afterwards, even on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor, nn

from . import huggingface, recurrent, timm_vit, timm_windowed, visattn_layers, visattn_modules
from .base import WHAT, ForwardState, Layer, LayerInfo, Route, first_tensor

FAMILIES = (visattn_modules, visattn_layers, timm_vit, timm_windowed, huggingface)

__all__ = ["WHAT", "Attachment", "LayerInfo", "attention_layers"]


def _discover(model: nn.Module) -> list[Layer]:
    modules = dict(model.named_modules())
    names = {id(module): name for name, module in modules.items()}
    steps = {name: step for name, module in modules.items() if (step := recurrent.shared_block(module)) is not None}
    shared = [names.get(id(block), f"{name}.block") for name, (block, _) in steps.items()]
    layers: list[Layer] = []
    for name, module in modules.items():
        if any(_inside(name, layer.path) for layer in layers) or any(_within(name, path) for path in shared):
            continue
        if name in steps:
            block, label = steps[name]
            path = names.get(id(block), f"{name}.block")
            inner = {_join(path, n): m for n, m in block.named_modules()}
            layers += [recurrent.StepLayer(layer, name, module, label)
                       for layer in _claimed(inner.items(), {**inner, **modules})]
            continue
        layers += _claimed([(name, module)], modules)
    return layers


def _claimed(items: Iterable[tuple[str, nn.Module]], modules: dict[str, nn.Module]) -> list[Layer]:
    """The layers the families claim among ``items`` in order (none inside a layer claimed before it)."""
    layers: list[Layer] = []
    for name, module in items:
        if any(_inside(name, layer.path) for layer in layers):
            continue
        for family in FAMILIES:
            layer = family.claim(name, module, modules)
            if layer is not None:
                layers.append(layer)
                break
    return layers


def _inside(name: str, prefix: str) -> bool:
    return prefix == "" or name.startswith(prefix + ".")


def _within(name: str, path: str) -> bool:
    return name == path or _inside(name, path)


def _scopes(layer: Layer) -> tuple[str, ...]:
    """The names ``within=`` selects ``layer`` by: its name and module path, and for a step layer its step."""
    if isinstance(layer, recurrent.StepLayer):
        return layer.name, layer.path, layer.block_path
    return layer.name, layer.path


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


class Attachment:
    """The lens attached to ``model``: its attention layers (optionally only those under ``within``) in order.

    Raises ``TypeError`` naming the model's class when no layer of a supported family is found.
    """

    def __init__(self, model: nn.Module, within: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if within is not None and not isinstance(within, str):
            raise TypeError(f"within must be a qualified module name (str) or None, got {within!r}")
        layers = _discover(model)
        if not layers:
            raise TypeError(
                f"visattn.lens cannot hook {type(model).__name__}: it has no visattn token mixer or attention layer "
                f"(NAT/DiNAT, HaloNet, DaViT, PATNet), timm Attention/AttentionRope/EvaAttention, Swin (V1/V2) "
                f"WindowAttention, MaxViT AttentionCl/Attention2d, or Hugging Face attention module that dispatches "
                f"through AttentionInterface"
            )
        if within is not None:
            chosen = [layer for layer in layers if any(_within(scope, within) for scope in _scopes(layer))]
            if not chosen:
                raise ValueError(f"within={within!r} holds no attention layer of {type(model).__name__}; its layers "
                                 f"are named {[layer.name for layer in layers]}")
            layers = chosen
        self.model = model
        self.within = within
        self.layers: tuple[Layer, ...] = tuple(layers)
        self.infos: tuple[LayerInfo, ...] = tuple(layer.info(i) for i, layer in enumerate(layers))

    def __len__(self) -> int:
        return len(self.layers)

    def check_indices(self, indices: Iterable[int], name: str) -> tuple[int, ...]:
        """``indices`` as a sorted tuple, or ``ValueError`` naming the bad ones and the valid range."""
        chosen = tuple(indices)
        for i in chosen:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"{name} must contain ints, got {i!r}")
        bad = sorted(i for i in set(chosen) if not 0 <= i < len(self))
        if bad:
            raise ValueError(f"{name} {bad} out of range: {type(self.model).__name__} has {len(self)} attention "
                             f"layers, valid indices are 0..{len(self) - 1}")
        return tuple(sorted(set(chosen)))

    @contextlib.contextmanager
    def routed(self, indices: Iterable[int]) -> Iterator[None]:
        """Route the layers ``indices`` through the lens for the duration of the block."""
        chosen = self.check_indices(indices, "layers")
        state = ForwardState()
        layers = [self.layers[i] for i in chosen]
        with contextlib.ExitStack() as stack:
            for i, layer in zip(chosen, layers, strict=True):
                stack.enter_context(layer.routed(Route(self.infos[i], id(self.model), state, layer)))
            for hook in _hidden_hooks(layers, chosen, state):
                stack.callback(hook.remove)
            for family in FAMILIES:
                members = [layer for layer in layers if layer.family == family.FAMILY]
                if members:
                    stack.enter_context(family.model_hooks(self.model, members, state))
            yield


def _hidden_hooks(layers: list[Layer], indices: tuple[int, ...], state: ForwardState) -> list[Any]:
    """One pre-hook per block: the block's input is the hidden state entering each of its layers."""
    by_block: dict[int, tuple[nn.Module, list[int]]] = {}
    for index, layer in zip(indices, layers, strict=True):
        if layer.block is not None:
            by_block.setdefault(id(layer.block), (layer.block, []))[1].append(index)
    hooks = []
    for block, members in by_block.values():
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], members: list[int] = members) -> None:
            hidden = first_tensor(args, kwargs)
            for index in members:
                if isinstance(hidden, Tensor):
                    state.hidden[index] = hidden
                else:
                    state.hidden.pop(index, None)

        hooks.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    return hooks


def attention_layers(model: nn.Module, within: str | None = None) -> list[LayerInfo]:
    """The attention layers the lens finds in ``model`` (index, qualified name, family, heads, what it records)."""
    return list(Attachment(model, within).infos)
