"""Lens adapter for Hugging Face transformers (v5) models, through the attention-function registry.

A layer is any module whose ``forward`` looks its attention function up in ``ALL_ATTENTION_FUNCTIONS`` (ViT, CLIP
vision and text, LLaMA, the language model and vision tower of LLaVA and Qwen2-VL, ...). While the lens is attached,
the model is switched with ``model.set_attn_implementation("visattn_lens")`` to :func:`attention_function`, and
the matching mask function :func:`mask_function` (registered with ``AttentionMaskInterface``, so causal and padding
masks are built and kept); the previous implementation of every (sub-)config is restored afterwards.

The attention function receives q and k after the model's own rotary embedding (LLaMA, Qwen2-VL's M-RoPE and vision
RoPE) and keys/values per key-value head; grouped-query keys are repeated per head (``module.num_key_value_groups``)
before ``lens_attention``. Layers of the model that the lens does not route keep the implementation their config
had: ``eager`` layers run the model's own ``eager_attention_forward`` (with the boolean mask turned into the
additive one ``eager`` expects), so ``output_attentions=True`` still returns one map per layer at the right index;
layers on any other implementation run ``scaled_dot_product_attention``. Vision-tower layers (a config with
``patch_size``) get the patch grid from the output of the tower's first ``Conv2d`` (the patch embedding) and the
prefix count as the remaining tokens (ViT and CLIP: the class token); Qwen2-VL's vision tower embeds flattened
patches in merge-window order, so its tokens have no row-major grid and ``grid`` stays None. Language-model layers
of a vision-language model get ``image_tokens``: the positions of ``config.image_token_id`` (and ``video_token_id``)
in ``input_ids``, kept across the decoding steps of ``generate``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..call import AttentionCall
from .base import ForwardState, Layer, Route, additive_bias, check_no_dropout, dispatch, parent_name, route_of

FAMILY = "huggingface"
IMPLEMENTATION = "visattn_lens"
UNSUPPORTED_KWARGS = ("softcap", "s_aux")

FALLBACK: dict[int, str] = {}
"""``id(config) -> implementation`` a config had before the outermost lens context switched it (kept while
switched, so unrouted layers can run what they ran before)."""


class HuggingFaceLayer(Layer):
    """A Hugging Face attention module as a lens layer (routed by the registered attention function)."""

    family = FAMILY


def available() -> bool:
    """transformers is imported (any Hugging Face model in memory has imported it)."""
    return "transformers" in sys.modules


@functools.cache
def dispatches_attention(cls: type) -> bool:
    """The class's forward looks its attention function up in ``ALL_ATTENTION_FUNCTIONS``."""
    forward = inspect.unwrap(cls.forward)
    code = getattr(forward, "__code__", None)
    return code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names


def claim(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> HuggingFaceLayer | None:
    """The lens layer for ``module`` if it is a Hugging Face attention module using the registry, else None (also
    for a module given a visattn mixer by ``visattn.replace_attention``: the lens routes that mixer instead)."""
    if not available() or not hasattr(module, "config") or not dispatches_attention(type(module)):
        return None
    if getattr(module, "visattn_mixer", None) is not None:
        return None
    block_name = parent_name(name)
    block = modules[block_name] if block_name is not None else module
    config = module.config
    num_heads = (getattr(module, "num_heads", None) or getattr(module, "num_attention_heads", None)
                 or getattr(config, "num_attention_heads", None) or getattr(config, "num_heads", None))
    tower = _tower(name, module, modules) if hasattr(config, "patch_size") else None
    return HuggingFaceLayer(name, module, block, num_heads, tower=tower)


def _tower(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> str:
    """The outermost enclosing module that shares the layer's config (the vision model the layer belongs to)."""
    parts = name.split(".")
    for end in range(len(parts)):
        candidate = ".".join(parts[:end])
        if getattr(modules[candidate], "config", None) is module.config:
            return candidate
    return name


def mask_function(*args: Any, **kwargs: Any) -> Tensor | None:
    """The boolean mask (True = attend) of ``sdpa_mask``, with the causal part always materialised."""
    from transformers.masking_utils import sdpa_mask

    kwargs.pop("allow_is_causal_skip", None)
    return sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)


def attention_function(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                       scaling: float | None = None, dropout: float = 0.0, is_causal: bool | None = None,
                       **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """The ``visattn_lens`` attention function: ``lens_attention`` for routed layers, SDPA for the others.

    ``query``: ``(B, heads, Nq, D)``; ``key``/``value``: ``(B, kv_heads, Nk, D)``; returns ``(out (B, Nq, heads, D),
    probs)`` like the other registered functions.
    """
    route = route_of(module)
    if route is None:
        return unrouted_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                  is_causal=is_causal, **kwargs)
    check_no_dropout(dropout, route.info.name)
    for name in UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"layer {route.info.name!r} passes {name}=...; the lens computes plain softmax "
                                      f"attention and does not implement {name}")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    n_q = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and attention_mask is None and n_q > 1
    if causal and key.shape[2] > n_q:
        key, value = key[:, :, :n_q], value[:, :, :n_q]
    bias = additive_bias(attention_mask, causal, n_q, key.shape[2], query.dtype, query.device)
    if kwargs.get("position_bias") is not None:
        bias = kwargs["position_bias"] if bias is None else bias + kwargs["position_bias"]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    grid, prefix = _layout(route, n_q)
    hidden = route.hidden
    if hidden is not None and hidden.dim() == 2:
        hidden = hidden.unsqueeze(0)
    image_tokens = route.state.image_tokens if route.layer.tower is None else None
    call = AttentionCall(route.info.index, route.info.name, query, key, value, scale, bias, hidden=hidden,
                         grid=grid, num_prefix_tokens=prefix, image_tokens=image_tokens)
    out, probs = dispatch(call, route)
    return out.transpose(1, 2).contiguous(), probs


def unrouted_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                       scaling: float | None, dropout: float, is_causal: bool | None,
                       **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """A layer the lens does not route: the implementation its config had before the switch (``eager`` or SDPA)."""
    if is_causal is not None:
        kwargs["is_causal"] = is_causal
    if FALLBACK.get(id(getattr(module, "config", None))) == "eager":
        eager = eager_function(type(module))
        if eager is not None:
            if attention_mask is not None and attention_mask.dtype == torch.bool:
                low = torch.finfo(query.dtype).min
                attention_mask = torch.where(attention_mask, torch.zeros((), dtype=query.dtype,
                                                                         device=query.device), low)
            return eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


@functools.cache
def eager_function(cls: type) -> Callable[..., tuple[Tensor, Tensor | None]] | None:
    """The ``eager_attention_forward`` of the modeling file defining ``cls`` (or a base class), else None."""
    for base in cls.__mro__:
        found = getattr(sys.modules.get(base.__module__), "eager_attention_forward", None)
        if callable(found):
            return found
    return None


def _layout(route: Route, n: int) -> tuple[tuple[int, ...] | None, int]:
    """Vision layers: the patch grid and the tokens in front of it, when the token count allows it."""
    tower = route.layer.tower
    grid = route.state.grids.get(tower) if tower is not None else None
    if grid is None or n < math.prod(grid):
        return None, 0
    return grid, n - math.prod(grid)


def register() -> None:
    """Register :func:`attention_function` and :func:`mask_function` under ``"visattn_lens"`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, attention_function)
    AttentionMaskInterface.register(IMPLEMENTATION, mask_function)


@contextlib.contextmanager
def model_hooks(model: nn.Module, layers: list[Layer], state: ForwardState) -> Iterator[None]:
    """Switch the model to ``visattn_lens`` and hook the patch embeddings and the input ids; undo on exit."""
    register()
    from transformers import PreTrainedModel

    with contextlib.ExitStack() as stack:
        stack.enter_context(_switched(model, layers, PreTrainedModel))
        for hook in _grid_hooks(model, layers, state) + _image_token_hooks(model, layers, state, PreTrainedModel):
            stack.callback(hook.remove)
        yield


@contextlib.contextmanager
def _switched(model: nn.Module, layers: list[Layer], pretrained: type) -> Iterator[None]:
    """``set_attn_implementation("visattn_lens")`` on the outermost Hugging Face models holding the layers."""
    named = list(model.named_modules())
    roots: list[tuple[str, nn.Module]] = []
    for name, module in named:
        if isinstance(module, pretrained) and not any(_inside(name, root) for root, _ in roots):
            roots.append((name, module))
    roots = [(n, m) for n, m in roots if any(_inside(layer.name, n) for layer in layers)]
    configs = _configs([m for _, m in named if isinstance(m, pretrained)] + [layer.module for layer in layers])
    previous = {key: config._attn_implementation_internal for key, config in configs.items()}
    added = [key for key, config in configs.items()
             if key not in FALLBACK and config._attn_implementation not in (None, IMPLEMENTATION)]
    FALLBACK.update((key, configs[key]._attn_implementation) for key in added)
    try:
        for _, root in roots:
            root.set_attn_implementation(IMPLEMENTATION)
        for layer in layers:
            if layer.module.config._attn_implementation != IMPLEMENTATION:
                raise TypeError(
                    f"visattn.lens cannot hook {type(layer.module).__name__} ({layer.name!r}): its model does not "
                    f"switch attention implementations through set_attn_implementation"
                )
        yield
    finally:
        for _, root in roots:
            if previous[id(root.config)] is not None:
                root.set_attn_implementation(previous[id(root.config)])
        for key, config in configs.items():
            if config._attn_implementation_internal != previous[key]:
                config._attn_implementation_internal = previous[key]
        for key in added:
            FALLBACK.pop(key, None)


def _inside(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _configs(modules: list[nn.Module]) -> dict[int, Any]:
    """Every config reachable from the modules and their sub-configs, by identity."""
    found: dict[int, Any] = {}
    todo = [m.config for m in modules if getattr(m, "config", None) is not None]
    while todo:
        config = todo.pop()
        if id(config) in found:
            continue
        found[id(config)] = config
        todo.extend(getattr(config, key) for key in getattr(config, "sub_configs", {})
                    if getattr(config, key, None) is not None)
    return found


def _grid_hooks(model: nn.Module, layers: list[Layer], state: ForwardState) -> list[Any]:
    """A forward hook on the first ``Conv2d`` of each vision tower: its output size is the patch grid."""
    modules = dict(model.named_modules())
    hooks = []
    for tower in sorted({layer.tower for layer in layers if layer.tower is not None}):
        conv = next((m for m in modules[tower].modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None:
            hooks.append(conv.register_forward_hook(_grid_hook(tower, state)))
    return hooks


def _grid_hook(tower: str, state: ForwardState) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        state.grids[tower] = tuple(int(s) for s in output.shape[-2:])

    return hook


def visual_token_ids(config: Any) -> list[int]:
    """The image (and video) placeholder token ids a vision-language config declares."""
    ids = []
    for attr in ("image_token_id", "image_token_index", "video_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


def _image_token_hooks(model: nn.Module, layers: list[Layer], state: ForwardState, pretrained: type) -> list[Any]:
    """A pre-hook on the outermost model declaring image token ids: record their positions in ``input_ids``."""
    if all(layer.tower is not None for layer in layers):
        return []
    owner = next((m for m in model.modules() if isinstance(m, pretrained) and visual_token_ids(m.config)), None)
    if owner is None:
        return []
    ids = torch.tensor(visual_token_ids(owner.config))
    return [owner.register_forward_pre_hook(_image_token_hook(ids, state), with_kwargs=True)]


def _image_token_hook(ids: Tensor, state: ForwardState) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args and isinstance(args[0], Tensor) and not args[0].is_floating_point():
            input_ids = args[0]
        visual = torch.isin(input_ids, ids.to(input_ids.device)) if input_ids is not None else None
        if visual is not None and bool(visual.any()):
            state.image_tokens = image_positions(visual)
        elif not _decoding(kwargs):
            state.image_tokens = None

    return hook


def image_positions(visual: Tensor) -> Tensor | None:
    """Positions of the visual tokens: 1-D when every batch row has them at the same places, else ``(B, n)`` when
    the rows have as many, else None."""
    if bool((visual == visual[:1]).all()):
        return visual[0].nonzero().flatten()
    counts = visual.sum(dim=1)
    if bool((counts == counts[0]).all()):
        return visual.nonzero()[:, 1].reshape(visual.shape[0], -1)
    return None


def _decoding(kwargs: dict[str, Any]) -> bool:
    """A generation step after the prompt: the key-value cache already holds tokens."""
    for key in ("cache", "past_key_values"):
        cache = kwargs.get(key)
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            return True
    return False
