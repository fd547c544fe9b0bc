"""Convert a trained softmax vision transformer into its linear-attention counterpart: distil, then fine-tune.

Paper: Zhang et al., "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry"
(arXiv 2402.04347), Sec. 4-5 (finetuned conversion). Every weight of the trained model is kept and each attention
layer's mixer is swapped for the target mixer (Hedgehog: ``phi(x) = [exp(W x + b), exp(-(W x + b))]``,
``W = I``, ``b = 0``). Two stages:

1. attention distillation: only the new mixers' parameters (Hedgehog's feature maps) are trained, each layer on the
   teacher's own hidden states, to minimise the soft-label cross entropy ``L = -mean_i sum_j a_ij log a^_ij``
   between the softmax weights ``a`` and the linear weights ``a^`` (:func:`visattn.nn.distill_attention`);
2. fine-tuning: every parameter of the converted model is trained on the task loss.

The report gives, per attention layer, the agreement ``mean_i sum_j min(a_ij, a^_ij)`` (1 minus the total
variation distance between the rows: 1 when the linear layer reproduces the softmax weights exactly) and the
distillation loss, before distillation (fresh mixers), after distillation and after fine-tuning, and the accuracy
of the teacher and of the converted model at each stage when evaluation data is given.

Any registered mixer whose module exposes ``attention_weights(q, k, shape)`` can be the target: the linear ones
(``hedgehog``, ``linear``, ``taylor``, ``inline``, ``l2vit_linear``, ``linear_infsa``, ...) are the point. A mixer
without parameters (``linear``: ``elu + 1`` maps) has nothing to distil; stage 1 is then skipped and said so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.hedgehog import softmax_mimicry_loss
from ..nn.hedgehog_distill import (
    _capture_inputs,
    _endless,
    attention_distillation_losses,
    attention_layers,
    distill_attention,
    hedgehog_student,
    layer_attention_weights,
)
from ..registry import get_mixer_spec

__all__ = ["ConversionReport", "LayerAgreement", "attention_agreement", "convert", "evaluate_accuracy", "finetune"]

logger = logging.getLogger("visattn")

Batch = Any
"""A model input, or a tuple ``(input, target, ...)`` whose first item is the input."""


@dataclass(frozen=True)
class LayerAgreement:
    """Per attention layer, on one batch: ``agreement`` ``mean_i sum_j min(a_ij, a^_ij)`` in [0, 1] for rows that
    sum to one (1 = the same weights) and ``loss`` Hedgehog's ``-mean_i sum_j a_ij log a^_ij``."""

    agreement: tuple[float, ...]
    loss: tuple[float, ...]

    @property
    def mean_agreement(self) -> float:
        return sum(self.agreement) / len(self.agreement)


@dataclass
class ConversionReport:
    """What :func:`convert` did and measured. Accuracies are ``None`` without ``eval_data``."""

    mixer: str
    distill_steps: int
    finetune_steps: int
    distilled_parameters: int
    agreement_initial: LayerAgreement
    agreement_distilled: LayerAgreement
    agreement_final: LayerAgreement
    teacher_accuracy: float | None = None
    initial_accuracy: float | None = None
    distilled_accuracy: float | None = None
    final_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def accuracy_kept(self) -> float | None:
        """The converted model's accuracy as a fraction of the teacher's (``final / teacher``)."""
        if self.final_accuracy is None or not self.teacher_accuracy:
            return None
        return self.final_accuracy / self.teacher_accuracy

    def summary(self) -> str:
        """A few lines: accuracies and the mean agreement at each stage."""
        lines = [f"softmax -> {self.mixer}: {self.distill_steps} distillation steps "
                 f"({self.distilled_parameters} parameters), {self.finetune_steps} fine-tuning steps"]
        for name, report in (("initial", self.agreement_initial), ("distilled", self.agreement_distilled),
                             ("final", self.agreement_final)):
            lines.append(f"  attention agreement {name}: " + ", ".join(f"{a:.3f}" for a in report.agreement))
        if self.teacher_accuracy is not None:
            lines.append(f"  accuracy teacher {self.teacher_accuracy:.4f}, initial {self.initial_accuracy:.4f}, "
                         f"distilled {self.distilled_accuracy:.4f}, final {self.final_accuracy:.4f} "
                         f"(kept {self.accuracy_kept:.1%})")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def attention_agreement(teacher_model: nn.Module, student_model: nn.Module, batch: Batch) -> LayerAgreement:
    """Per-layer agreement and Hedgehog loss between the teacher's softmax weights and the student's weights,
    each student layer fed the teacher's hidden state on ``batch`` (as in distillation)."""
    teacher_layers, student_layers = attention_layers(teacher_model), attention_layers(student_model)
    if not teacher_layers or len(teacher_layers) != len(student_layers):
        raise ValueError(f"teacher_model and student_model must have the same positive number of attention layers, "
                         f"got {len(teacher_layers)} and {len(student_layers)}")
    inputs = _capture_inputs(teacher_model, teacher_layers, batch)
    agreement, losses = [], []
    with torch.no_grad():
        for teacher, student, (x, shape) in zip(teacher_layers, student_layers, inputs, strict=True):
            target = layer_attention_weights(teacher, x, shape)
            weights = layer_attention_weights(student, x, shape)
            agreement.append(float(torch.minimum(target, weights).sum(dim=-1).mean()))
            losses.append(float(softmax_mimicry_loss(target, weights.clamp_min(0))))
    return LayerAgreement(tuple(agreement), tuple(losses))


def evaluate_accuracy(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Top-1 accuracy of ``model`` (eval mode, restored after) over ``(input, label)`` batches."""
    training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError("eval_data must yield (input, label) batches")
                logits = model(batch[0])
                correct += int((logits.argmax(dim=-1) == batch[1].to(logits.device)).sum())
                total += int(batch[1].numel())
    finally:
        model.train(training)
    if total == 0:
        raise ValueError("eval_data yielded no labelled example")
    return correct / total


def finetune(model: nn.Module, batches: Iterable[Batch], steps: int, lr: float = 1e-4, weight_decay: float = 0.0,
             loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy) -> nn.Module:
    """Train every parameter of ``model`` on ``(input, target)`` batches (cycled) for ``steps`` AdamW steps with a
    cosine learning-rate decay; return the model (left in eval mode)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    for step, batch in zip(range(steps), _endless(batches), strict=False):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("data must yield (input, target) batches for fine-tuning")
        loss = loss_fn(model(batch[0]), batch[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("finetune step %d: loss %.4f", step, loss.item())
    return model.eval()


def _weight_parameters(teacher_model: nn.Module, student_model: nn.Module, batch: Batch) -> int:
    """How many of the student mixers' parameters the distillation loss depends on (InLine's, for one, only enter
    its local residual, not its weights)."""
    params = [p for layer in attention_layers(student_model) for p in layer.mixer.parameters()]
    if not params:
        return 0
    with torch.enable_grad():
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            total = torch.stack(attention_distillation_losses(teacher_model, student_model, batch)).sum()
            if not total.requires_grad:
                return 0
            grads = torch.autograd.grad(total, params, allow_unused=True)
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
    return sum(p.numel() for p, g in zip(params, grads, strict=True) if g is not None)


def _check_steps(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def convert(model: nn.Module, mixer: str = "hedgehog", data: Iterable[Batch] | None = None, *,
            eval_data: Iterable[Batch] | None = None, distill_steps: int = 300, distill_lr: float = 1e-2,
            finetune_steps: int = 100, finetune_lr: float = 1e-4, weight_decay: float = 0.0,
            loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
            mixer_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, ConversionReport]:
    """Turn a trained softmax model into its ``mixer`` counterpart (Hedgehog, arXiv 2402.04347); return
    ``(converted, report)``. ``model`` is left unchanged (the converted model is a copy, in eval mode).

    Args:
        model: a trained model whose attention layers are timm ``Attention`` or visattn ``Attention`` modules
            (a timm ViT / DeiT, ``visattn_vit_*``, ...).
        mixer: a registered mixer name (``visattn.list_mixers()``) whose module has ``attention_weights``;
            ``"hedgehog"`` by default.
        data: training batches, ``(input, target)`` tuples (iterated again as needed); stage 1 reads the inputs,
            stage 2 both.
        eval_data: ``(input, label)`` batches for the accuracies in the report (optional).
        distill_steps, distill_lr: stage 1 (Adam on the mixers' parameters only; 0 steps skips it).
        finetune_steps, finetune_lr, weight_decay, loss_fn: stage 2 (AdamW on every parameter, cosine decay;
            0 steps skips it).
        mixer_kwargs: keywords for the mixer factory (the layer's ``dim``, ``num_heads``, ``head_dim`` are filled
            in).

    The agreements in the report are measured on the first batch of ``eval_data`` (else of ``data``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(mixer, str):
        raise TypeError(f"mixer must be a registered mixer name, got {type(mixer).__name__}")
    get_mixer_spec(mixer)
    if mixer == "softmax":
        raise ValueError("mixer='softmax' is the teacher's own attention; pick a linear mixer such as 'hedgehog'")
    for name, batches in (("data", data), ("eval_data", eval_data)):
        if name == "data" and batches is None:
            raise ValueError("data must be an iterable of (input, target) training batches, got None")
        if batches is not None and iter(batches) is batches:
            raise ValueError(f"{name} must be re-iterable (a list or a DataLoader), got the one-shot iterator "
                             f"{type(batches).__name__}: it is read once per stage")
    distill_steps, finetune_steps = _check_steps(distill_steps, "distill_steps"), _check_steps(finetune_steps,
                                                                                                "finetune_steps")
    student = hedgehog_student(model, mixer, **(mixer_kwargs or {}))
    missing = [type(layer.mixer).__name__ for layer in attention_layers(student)
               if not hasattr(layer.mixer, "attention_weights")]
    if missing:
        raise ValueError(f"mixer {mixer!r} ({missing[0]}) has no attention_weights(q, k, shape); convert needs the "
                         "dense weights to distil and to report agreement")
    probe = next(iter(eval_data if eval_data is not None else data), None)
    if probe is None:
        raise ValueError("eval_data (or data) yielded no batch")
    teacher_mode = model.training
    model.eval()
    try:
        initial = attention_agreement(model, student, probe)
        report_kwargs: dict[str, Any] = {}
        if eval_data is not None:
            report_kwargs["teacher_accuracy"] = evaluate_accuracy(model, eval_data)
            report_kwargs["initial_accuracy"] = evaluate_accuracy(student, eval_data)
        notes = []
        distilled_parameters = _weight_parameters(model, student, probe)
        if distill_steps and distilled_parameters:
            distill_attention(model, student, data, steps=distill_steps, lr=distill_lr)
        elif distill_steps:
            notes.append(f"mixer {mixer!r} has no parameter that enters its attention weights: nothing to distil, "
                         "stage 1 skipped")
            distill_steps = 0
        distilled = attention_agreement(model, student, probe)
        if eval_data is not None:
            report_kwargs["distilled_accuracy"] = evaluate_accuracy(student, eval_data)
        if finetune_steps:
            finetune(student, data, finetune_steps, finetune_lr, weight_decay, loss_fn)
        final = attention_agreement(model, student, probe)
        if eval_data is not None:
            report_kwargs["final_accuracy"] = evaluate_accuracy(student, eval_data)
    finally:
        model.train(teacher_mode)
    report = ConversionReport(mixer, distill_steps, finetune_steps, distilled_parameters, initial, distilled, final,
                              notes=notes, **report_kwargs)
    logger.info("convert:\n%s", report.summary())
    return student.eval(), report
