"""Sparsifiner's training: fit the connectivity predictors to a dense teacher's attention, then distil the teacher.

Paper: Wei et al., "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers"
(arXiv 2303.13755); stages, losses and weights as the released default configuration (lim142857/Sparsifiner,
``sparsifiner_default_config.yaml``, ``src/losses.py``, ``src/main.py``), whose 50 epochs are 5 of the first stage
and 45 of the second:

1. **Attention reconstruction** (``recon_steps``, default a tenth of ``steps``): only the predictors train (the
   backbone is frozen, and the student's attention runs dense, as the released code does in this stage), on
   ``L_recon = 0.01 * mean_layers sum_{b,h,i>P,j} (coef P_back^T - A_teacher)_{ij}^2`` with the teacher's
   ``A = softmax(q k^T d^-1/2)`` of the same layer (the connectivity loss: rows of the class token excluded).
2. **Distillation** (the remaining steps): the predictors freeze, the student runs its sparse attention and the
   backbone trains on ``L = CE(y_s, y) + 0.5 KL(softmax(y_t) || softmax(y_s)) + 0.5 MSE(z_s, z_t)`` (logits ``y``,
   the last layer's normalised patch tokens ``z``).

Each stage has its own AdamW (weight decay 0.05) and a cosine learning rate with linear warm-up, scaled from the
release's epochs to steps (reconstruction 3e-4 -> 2e-4, warm-up 3/5 of the stage; distillation 8e-5 -> 2e-6,
warm-up 3/45). The student must be a ViT with ``forward_features``/``forward_head`` (timm's API) whose attention
modules are visattn :class:`~visattn.nn.attention.Attention` with a :class:`~visattn.nn.sparsifiner.
SparsifinerMixer`; the teacher a ViT with as many attention modules (timm's or visattn's softmax ``Attention``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SparsifyReport", "accuracy", "attention_density", "sparsify"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SparsifyReport:
    """What :func:`sparsify` measured on ``eval_data``.

    ``teacher_accuracy``, ``student_accuracy`` (after both stages), ``predictor_accuracy`` (the student with its
    trained predictors before distillation), all in [0, 1]; ``density``: the fraction of query-key pairs the
    student attends to, averaged over its Sparsifiner layers (the class token's dense row included), measured on
    the masks; ``keep_rate``: the budget of the non-class rows (0.25 in the paper); per-step losses of both stages.
    """

    teacher_accuracy: float
    student_accuracy: float
    predictor_accuracy: float
    density: float
    keep_rate: float
    recon_losses: list[float] = field(repr=False)
    distill_losses: list[float] = field(repr=False)

    @property
    def accuracy_drop(self) -> float:
        """``teacher_accuracy - student_accuracy`` (in [0, 1]; positive when the student is worse)."""
        return self.teacher_accuracy - self.student_accuracy


def _sparsifiner_types() -> tuple[type[nn.Module], type[nn.Module]]:
    from ..nn.attention import Attention
    from ..nn.sparsifiner import SparsifinerMixer

    return Attention, SparsifinerMixer


def _student_layers(student: nn.Module) -> list[nn.Module]:
    attention, mixer = _sparsifiner_types()
    layers = [m for m in student.modules() if isinstance(m, attention) and isinstance(m.mixer, mixer)]
    if not layers:
        raise ValueError("student must contain visattn Attention modules with a Sparsifiner mixer (e.g. "
                         "timm.create_model('visattn_sparsifiner_deit_small_patch16_224')), found none")
    for layer in layers:
        if layer.gate is not None:
            raise ValueError("student attention with a gate (gated=True) is not supported by sparsify")
    return layers


def _teacher_layers(teacher: nn.Module, count: int) -> list[nn.Module]:
    from timm.layers import Attention as TimmAttention

    from ..nn.attention import Attention

    layers = [m for m in teacher.modules() if isinstance(m, (TimmAttention, Attention))]
    if len(layers) != count:
        raise ValueError(f"teacher must have one attention module per student Sparsifiner layer ({count}), found "
                         f"{len(layers)} timm or visattn Attention modules")
    return layers


def _softmax_probs(module: nn.Module, x: Tensor) -> Tensor:
    """``softmax(q k^T scale)`` of a timm or visattn softmax ``Attention`` on its input ``x``, ``(B, H, N, N)``."""
    from ..nn.attention import Attention

    if isinstance(module, Attention):
        q, k, _ = module.qkv_heads(x)
        scale = getattr(module.mixer, "scale", None) or q.shape[-1] ** -0.5
    else:
        b, n, _ = x.shape
        q, k, _ = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = module.q_norm(q), module.k_norm(k)
        scale = module.scale
    return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)


@contextmanager
def _hooks(modules: list[nn.Module], hook: Any) -> Iterator[None]:
    handles = [m.register_forward_hook(lambda mod, args, out, i=i: hook(i, mod, args[0], out))
               for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _dense_output(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The layer's output with dense softmax attention instead of its mask, and its ``q, k``."""
    q, k, v = layer.qkv_heads(x)
    mixed = F.scaled_dot_product_attention(q, k, v, scale=layer.mixer.scale)
    b, n, _ = x.shape
    out = layer.proj_drop(layer.proj(layer.norm(mixed.transpose(1, 2).reshape(b, n, -1))))
    return out, q, k


def _pairs(data: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """The ``(images, labels)`` batches of ``data``, checked; ValueError if there are none."""
    empty = True
    for batch in data:
        empty = False
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
            raise TypeError(f"data must yield (images, labels) tensor pairs, got {type(batch).__name__}")
        yield batch[0], batch[1]
    if empty:
        raise ValueError("data yielded no batches")


def _cycle(data: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from _pairs(data)


def _lr(step: int, total: int, base: float, final: float, warmup: int) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine to ``final`` (the release's schedule)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy of ``model`` (eval mode, restored after) over the ``(images, labels)`` batches of ``data``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in _pairs(data):
            correct += (model(x).argmax(-1) == y).sum()
            total += y.numel()
    finally:
        model.train(was_training)
    return float(correct) / total


@torch.no_grad()
def attention_density(student: nn.Module, data: Iterable[tuple[Tensor, Tensor]]) -> float:
    """The fraction of query-key pairs the Sparsifiner layers of ``student`` attend to on ``data``'s images, read
    from their boolean masks (the class rows count as dense) and averaged over layers, heads and rows."""
    layers = _student_layers(student)
    kept, pairs = [], []

    def record(_: int, layer: nn.Module, x: Tensor, out: Tensor) -> None:
        q, k, _v = layer.qkv_heads(x)
        mask = layer.mixer.attention_mask(q, k, layer.grid_shape(x.shape[1]))
        kept.append(mask.sum())
        pairs.append(mask.numel())

    was_training = student.training
    student.eval()
    try:
        with _hooks(layers, record):
            for x, _y in _pairs(data):
                student(x)
    finally:
        student.train(was_training)
    return float(torch.stack(kept).sum()) / sum(pairs)


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _load_teacher_weights(teacher: nn.Module, student: nn.Module) -> None:
    """Copy every teacher parameter into the student; only the predictors (``.attn.mixer.``) may be missing."""
    result = student.load_state_dict(teacher.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if ".attn.mixer." not in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"student must have the teacher's architecture plus the predictors; missing {missing}, "
                         f"unexpected {list(result.unexpected_keys)}")


def sparsify(teacher: nn.Module, student: nn.Module, data: Iterable[tuple[Tensor, Tensor]], steps: int = 1000, *,
             recon_steps: int | None = None, eval_data: Iterable[tuple[Tensor, Tensor]] | None = None,
             init_from_teacher: bool = True, recon_lr: float = 3e-4, recon_final_lr: float = 2e-4,
             distill_lr: float = 8e-5, distill_final_lr: float = 2e-6, weight_decay: float = 0.05,
             recon_weight: float = 0.01, cls_weight: float = 1.0, logit_weight: float = 0.5,
             token_weight: float = 0.5) -> SparsifyReport:
    """Train ``student`` (a Sparsifiner ViT) from the dense ``teacher`` in the paper's two stages (module docstring).

    Args:
        teacher: the trained dense ViT (left unchanged, used in eval mode).
        student: the Sparsifiner ViT, trained in place.
        data: ``(images, labels)`` batches, cycled for ``steps`` optimiser steps.
        steps: all optimiser steps; ``recon_steps`` of them (default ``steps // 10``, 5 of 50 epochs in the
            release) fit the predictors, the rest distil.
        eval_data: batches for the report's accuracies and density (default ``data``).
        init_from_teacher: first copy the teacher's weights into the student (the paper's student starts from
            the teacher; only the predictors keep their initialisation).
        recon_lr, recon_final_lr, distill_lr, distill_final_lr: the stages' cosine schedules.
        recon_weight, cls_weight, logit_weight, token_weight: loss weights (0.01, 1, 0.5, 0.5 in the release).

    Returns:
        a :class:`SparsifyReport`.
    """
    for name, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    _check_positive_int(steps, "steps")
    recon_steps = steps // 10 if recon_steps is None else _check_positive_int(recon_steps, "recon_steps", 0)
    if recon_steps > steps:
        raise ValueError(f"recon_steps must be <= steps={steps}, got {recon_steps}")
    for name, value in (("recon_lr", recon_lr), ("distill_lr", distill_lr), ("recon_final_lr", recon_final_lr),
                        ("distill_final_lr", distill_final_lr)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    layers = _student_layers(student)
    teacher_layers = _teacher_layers(teacher, len(layers))
    if init_from_teacher:
        _load_teacher_weights(teacher, student)
    eval_data = data if eval_data is None else eval_data
    teacher.eval()
    batches = _cycle(data)
    predictor = [p for layer in layers for p in layer.mixer.parameters()]
    predictor_ids = {id(p) for p in predictor}
    backbone = [p for p in student.parameters() if id(p) not in predictor_ids]
    flags = {id(p): p.requires_grad for p in student.parameters()}

    recon_losses = _reconstruction_stage(teacher, student, layers, teacher_layers, batches, recon_steps,
                                         predictor, backbone, recon_lr, recon_final_lr, weight_decay, recon_weight)
    predictor_accuracy = accuracy(student, eval_data)
    distill_losses = _distillation_stage(teacher, student, batches, steps - recon_steps, predictor, backbone,
                                         distill_lr, distill_final_lr, weight_decay,
                                         (cls_weight, logit_weight, token_weight))
    for p in student.parameters():
        p.requires_grad_(flags[id(p)])
    report = SparsifyReport(
        teacher_accuracy=accuracy(teacher, eval_data), student_accuracy=accuracy(student, eval_data),
        predictor_accuracy=predictor_accuracy, density=attention_density(student, eval_data),
        keep_rate=layers[0].mixer.keep_rate, recon_losses=recon_losses, distill_losses=distill_losses)
    _log.info("sparsify: teacher %.4f, student %.4f (predictors only %.4f), density %.4f", report.teacher_accuracy,
              report.student_accuracy, report.predictor_accuracy, report.density)
    return report


def _reconstruction_stage(teacher: nn.Module, student: nn.Module, layers: list[nn.Module],
                          teacher_layers: list[nn.Module], batches: Iterator[tuple[Tensor, Tensor]], steps: int,
                          predictor: list[nn.Parameter], backbone: list[nn.Parameter], lr: float, final_lr: float,
                          weight_decay: float, weight: float) -> list[float]:
    """Stage 1: the predictors fit the teacher's attention, the backbone frozen and run dense."""
    if not steps:
        return []
    for p in backbone:
        p.requires_grad_(False)
    for p in predictor:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(predictor, lr=lr, weight_decay=weight_decay)
    targets: dict[int, Tensor] = {}
    terms: list[Tensor] = []

    def capture_teacher(i: int, module: nn.Module, x: Tensor, out: Tensor) -> None:
        targets[i] = _softmax_probs(module, x)

    def dense_student(i: int, layer: nn.Module, x: Tensor, out: Tensor) -> Tensor:
        dense, q, k = _dense_output(layer, x)
        terms.append(layer.mixer.reconstruction_loss(q, k, layer.grid_shape(x.shape[1]), target=targets[i]))
        return dense

    student.train()
    losses = []
    for step in range(steps):
        x, _y = next(batches)
        with torch.no_grad(), _hooks(teacher_layers, capture_teacher):
            teacher(x)
        terms.clear()
        with _hooks(layers, dense_student):
            student(x)
        loss = weight * torch.stack(terms).mean()
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr, final_lr, max(1, round(0.6 * steps)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _distillation_stage(teacher: nn.Module, student: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], steps: int,
                        predictor: list[nn.Parameter], backbone: list[nn.Parameter], lr: float, final_lr: float,
                        weight_decay: float, weights: tuple[float, float, float]) -> list[float]:
    """Stage 2: the backbone learns from the labels, the teacher's logits and its last tokens; masks fixed."""
    if not steps:
        return []
    for p in predictor:
        p.requires_grad_(False)
    for p in backbone:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(backbone, lr=lr, weight_decay=weight_decay)
    cls_weight, logit_weight, token_weight = weights
    prefix = int(getattr(student, "num_prefix_tokens", 1))
    student.train()
    losses = []
    for step in range(steps):
        x, y = next(batches)
        with torch.no_grad():
            tokens_t = teacher.forward_features(x)
            logits_t = teacher.forward_head(tokens_t)
        tokens_s = student.forward_features(x)
        logits_s = student.forward_head(tokens_s)
        loss = cls_weight * F.cross_entropy(logits_s, y)
        loss = loss + logit_weight * F.kl_div(F.log_softmax(logits_s, -1), F.log_softmax(logits_t, -1),
                                              reduction="batchmean", log_target=True)
        loss = loss + token_weight * F.mse_loss(tokens_s[:, prefix:], tokens_t[:, prefix:])
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr, final_lr, max(1, round(steps / 15)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
