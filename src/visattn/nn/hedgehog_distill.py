"""Convert a trained softmax-attention model to Hedgehog linear attention by attention distillation.

Paper: Zhang et al., "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry"
(arXiv 2402.04347), Sec. 4: keep every weight of the trained model, add Hedgehog feature maps to each attention
layer, and train only the feature maps so that each layer's linear attention weights ``a^`` match the softmax
weights ``a`` of the same layer on the same input, with ``L = -mean_i sum_j a_ij log a^_ij`` per layer.

Workflow::

    student = hedgehog_student(teacher)                       # a copy, attention mixers swapped for "hedgehog"
    distill_attention(teacher, student, batches, steps=300)  # fits the feature maps, layer by layer
    # optionally finetune the whole student on the task afterwards

Each layer is trained on the teacher's own hidden states (captured with forward hooks while the teacher runs),
so the layers are independent: one optimiser step on the sum of the per-layer losses moves each layer's feature
maps by the gradient of its own loss alone, which is training them layer by layer in parallel.

Teacher attention layers are visattn :class:`~visattn.nn.Attention` modules (weights from
``mixer.attention_weights``) or timm ``Attention`` modules (``softmax(q k^T * scale)`` recomputed from their
``qkv``, ``q_norm`` and ``k_norm``); student layers are visattn ``Attention`` modules whose mixers have
parameters (Hedgehog's feature maps), matched to the teacher's in module order.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import create_mixer_for_layer
from .attention import Attention
from .hedgehog import softmax_mimicry_loss
from .replace import _timm_attention, replace_attention

__all__ = [
    "attention_distillation_losses",
    "attention_layers",
    "distill_attention",
    "hedgehog_student",
    "layer_attention_weights",
]

logger = logging.getLogger("visattn")


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The attention layers of ``model`` in module order: visattn ``Attention`` and timm ``Attention`` modules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, (Attention, _timm_attention()))]


def layer_attention_weights(layer: nn.Module, x: Tensor, shape: int | tuple[int, ...] | None = None) -> Tensor:
    """The ``(B, heads, N, N)`` attention weights of ``layer`` on its input ``x`` ``(B, N, C)``.

    visattn ``Attention``: ``mixer.attention_weights`` on its own q and k; timm ``Attention``:
    ``softmax(q k^T * scale)`` with q and k from ``qkv`` after ``q_norm``/``k_norm`` (no mask).
    """
    if isinstance(layer, Attention):
        q, k, _ = layer.qkv_heads(x)
        return layer.mixer.attention_weights(q, k, layer.grid_shape(x.shape[1], shape))
    if isinstance(layer, _timm_attention()):
        b, n, _ = x.shape
        q, k, _ = layer.qkv(x).reshape(b, n, 3, layer.num_heads, layer.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = layer.q_norm(q), layer.k_norm(k)
        return torch.softmax((q * layer.scale) @ k.transpose(-2, -1), dim=-1)
    raise TypeError(f"layer must be a visattn Attention or a timm Attention, got {type(layer).__name__}")


def hedgehog_student(teacher_model: nn.Module, mixer: str = "hedgehog", **mixer_kwargs: Any) -> nn.Module:
    """A deep copy of ``teacher_model`` whose attention layers use ``mixer`` (default ``"hedgehog"``), weights kept.

    timm ``Attention`` layers are first replaced by visattn's (:func:`~visattn.nn.replace_attention` with
    ``"softmax"``, which keeps the weights, grid and prefix tokens); then every visattn ``Attention`` gets a new
    mixer (Hedgehog: identity-initialised feature maps; any registered mixer name works, e.g. another linear
    attention for :func:`visattn.train.convert.convert`). The copy is left in the teacher's train/eval mode.
    """
    if not attention_layers(teacher_model):
        raise ValueError(f"teacher_model ({type(teacher_model).__name__}) has no attention layer to convert")
    student = copy.deepcopy(teacher_model)
    timm_attention = _timm_attention()
    if any(isinstance(m, timm_attention) for m in student.modules()):
        replace_attention(student, "softmax")
    for layer in attention_layers(student):
        weight = layer.qkv.weight
        new = create_mixer_for_layer(mixer, dim=layer.qkv.in_features, num_heads=layer.num_heads,
                                     head_dim=layer.head_dim, **mixer_kwargs)
        layer.mixer = new.to(device=weight.device, dtype=weight.dtype)
    return student


def _paired_layers(teacher_model: nn.Module, student_model: nn.Module) -> list[tuple[nn.Module, Attention]]:
    teacher_layers, student_layers = attention_layers(teacher_model), attention_layers(student_model)
    if not teacher_layers:
        raise ValueError(f"teacher_model ({type(teacher_model).__name__}) has no attention layer")
    if len(teacher_layers) != len(student_layers):
        raise ValueError(f"teacher_model has {len(teacher_layers)} attention layers but student_model has "
                         f"{len(student_layers)}; they must match one to one")
    for i, layer in enumerate(student_layers):
        if not isinstance(layer, Attention):
            raise TypeError(f"student attention layer {i} must be a visattn Attention, got {type(layer).__name__}")
        if not any(True for _ in layer.mixer.parameters()):
            raise ValueError(f"student attention layer {i} has a mixer without parameters "
                             f"({type(layer.mixer).__name__}); nothing to distill")
        if getattr(layer.mixer, "is_causal", False):
            raise ValueError(f"student attention layer {i} is causal; distill_attention matches non-causal "
                             "softmax teachers")
    return list(zip(teacher_layers, student_layers, strict=True))


def _model_input(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _capture_inputs(teacher_model: nn.Module, layers: list[nn.Module], batch: Any) -> list[tuple[Tensor, Any]]:
    """Run the teacher on ``batch`` and return each layer's input ``x`` and ``shape`` argument."""
    captured: dict[int, tuple[Tensor, Any]] = {}

    def hook_for(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["x"]
            shape = kwargs.get("shape", args[1] if len(args) > 1 and isinstance(module, Attention) else None)
            captured[index] = (x.detach(), shape)
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            teacher_model(_model_input(batch))
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in range(len(layers)) if i not in captured]
    if missing:
        raise ValueError(f"the teacher's forward pass did not call attention layers {missing}")
    return [captured[i] for i in range(len(layers))]


def attention_distillation_losses(teacher_model: nn.Module, student_model: nn.Module, batch: Any) -> list[Tensor]:
    """Per-layer Hedgehog losses ``-mean_i sum_j a_ij log a^_ij`` on ``batch`` (the model input, or a tuple whose
    first item is), each layer fed the teacher's hidden state; differentiable in the student's mixers."""
    pairs = _paired_layers(teacher_model, student_model)
    inputs = _capture_inputs(teacher_model, [t for t, _ in pairs], batch)
    losses = []
    for (teacher, student), (x, shape) in zip(pairs, inputs, strict=True):
        with torch.no_grad():
            target = layer_attention_weights(teacher, x, shape)
        losses.append(softmax_mimicry_loss(target, layer_attention_weights(student, x, shape)))
    return losses


def _endless(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("batches must yield at least one batch (an exhausted iterator yields none)")


def distill_attention(teacher_model: nn.Module, student_model: nn.Module, batches: Iterable[Any], steps: int = 300,
                      lr: float = 1e-2) -> nn.Module:
    """Train the student's attention feature maps to mimic the teacher's softmax attention; return the student.

    Args:
        teacher_model: the trained softmax model (run in eval mode, never changed).
        student_model: the same architecture with Hedgehog mixers, e.g. :func:`hedgehog_student` of the teacher.
        batches: an iterable of model inputs (or tuples whose first item is the input), cycled for ``steps``.
        steps: optimiser steps (Adam) on the sum of per-layer losses.
        lr: Adam's learning rate (the paper's attention-transfer stage uses 1e-2).

    Only the parameters of the student layers' mixers are updated; every other parameter keeps its value and its
    ``requires_grad`` flag, and both models get back their train/eval modes.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    pairs = _paired_layers(teacher_model, student_model)
    trained = [p for _, student in pairs for p in student.mixer.parameters()]
    flags = {p: p.requires_grad for p in student_model.parameters()}
    modes = (teacher_model.training, student_model.training)
    for p in student_model.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    teacher_model.eval()
    student_model.eval()
    optimizer = torch.optim.Adam(trained, lr=lr)
    try:
        for step, batch in zip(range(steps), _endless(batches), strict=False):
            losses = attention_distillation_losses(teacher_model, student_model, batch)
            total = torch.stack(losses).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if step % 50 == 0 or step == steps - 1:
                logger.info("distill_attention step %d: loss per layer %s", step, [round(x.item(), 4) for x in losses])
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        teacher_model.train(modes[0])
        student_model.train(modes[1])
    return student_model
