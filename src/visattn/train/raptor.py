"""Fit Raptor, the block-recurrent surrogate, to a trained timm ViT: ``fit_raptor(teacher, data)``.

Jacobs, Fel, Hakim et al., "Block-Recurrent Dynamics in Vision Transformers", arXiv 2512.19941. With ``h_0`` the
teacher's embedded tokens and ``h_l`` the output of its block ``l`` (1-based), the surrogate step
``f_{p(l)}(., t = l)`` (:class:`visattn.models.raptor.RaptorBlock` of the phase ``p(l)`` holding layer ``l``) should
map ``h_{l-1}`` to ``h_l``. The fit follows the paper's released training runs:

1. **Phases** (unless given): ``W[l, m] = mean(1 - cos(a_l, a_m))`` over the class and mean-patch tokens of the
   teacher's block outputs (:func:`visattn.lens.metrics.similarity.layer_dissimilarity`), split by recursive max-cut
   (:func:`visattn.lens.metrics.phases.max_cut_phases`, stopping when a cut is ``<= eps`` of the total weight).
2. **Per phase, teacher forcing**: each phase's block alone, loss
   ``r * mean_l MSE(f(h_{l-1}, l), h_l) + (1 - r) * mean_l MSE(x_l, h_l)`` over the phase's layers, where ``x_l``
   runs the block autoregressively from the teacher's state at the start of the phase (of each contiguous run of a
   non-contiguous phase); ``r`` falls linearly from 1 to 0 over the first ``teacher_forcing_anneal`` (0.25) of the
   steps.
3. **Autoregressive fine-tuning**: all blocks together from ``h_0`` through all ``L`` steps, loss
   ``mean_l MSE_w(x_l, h_l)`` with the class, register and patch tokens weighted ``token_weights``
   (the paper: 0.45, 0.10, 0.45; groups a model lacks are dropped and the rest renormalised).

AdamW (lr 3e-4, weight decay 1e-4), linear warm-up then cosine decay to ``lr * 1e-3``, gradients clipped to norm 1,
as the paper's runs (their step counts are for ImageNet; the defaults here are for small teachers). Only the
recurrent blocks are trained: the embedding, final norm and head are the teacher's
(:func:`visattn.models.raptor.raptor_from_teacher`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..lens.metrics.phases import max_cut_phases
from ..lens.metrics.similarity import layer_dissimilarity
from ..models.raptor import Raptor, check_phases, raptor_from_teacher

log = logging.getLogger(__name__)

__all__ = ["RaptorReport", "evaluate_raptor", "fit_raptor", "teacher_phases", "teacher_states"]

Data = Tensor | tuple[Tensor, Tensor] | Iterable[Any]


@dataclass
class RaptorReport:
    """What :func:`fit_raptor` did and how well the surrogate follows its teacher.

    Attributes:
        phases: the phases fitted (0-based teacher layers), one shared block each.
        dissimilarity: the ``(L, L)`` layer dissimilarity the phases were cut from (None when phases were given).
        phase_losses: per phase, the teacher-forcing stage's loss at each step.
        autoregressive_losses: the joint autoregressive stage's loss at each step.
        phase_r2: per phase, after fitting, the R^2 of the surrogate's autoregressive state against the teacher's at
            the phase's last layer, on the evaluation images (``1 - SS_res / SS_tot`` over tokens and channels).
        teacher_accuracy, surrogate_accuracy: top-1 accuracy on the evaluation images (None without labels).
        agreement: the fraction of evaluation images where the surrogate's top-1 class is the teacher's.
        evaluated_on: ``"eval_data"`` or ``"training data"`` (when no ``eval_data`` was given).
    """

    phases: tuple[tuple[int, ...], ...]
    dissimilarity: Tensor | None
    phase_losses: list[list[float]] = field(default_factory=list)
    autoregressive_losses: list[float] = field(default_factory=list)
    phase_r2: list[float] = field(default_factory=list)
    teacher_accuracy: float | None = None
    surrogate_accuracy: float | None = None
    agreement: float | None = None
    evaluated_on: str = "training data"

    @property
    def num_phases(self) -> int:
        """The number of shared blocks."""
        return len(self.phases)

    @property
    def accuracy_fraction(self) -> float | None:
        """``surrogate_accuracy / teacher_accuracy`` (None without labels or with a teacher at 0)."""
        if self.teacher_accuracy is None or self.surrogate_accuracy is None or self.teacher_accuracy == 0:
            return None
        return self.surrogate_accuracy / self.teacher_accuracy


def teacher_states(teacher: nn.Module, images: Tensor) -> Tensor:
    """``(L + 1, B, N, C)``: the input of the teacher's first block (``h_0``, the embedded tokens) and the output of
    each of its ``L`` blocks, from one no-grad ``forward_features`` (forward hooks on ``teacher.blocks``)."""
    blocks = getattr(teacher, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not len(blocks):
        raise TypeError(f"teacher must have a non-empty `blocks` sequence (a timm ViT), got {type(teacher).__name__}")
    states: list[Tensor] = []
    hooks = [blocks[0].register_forward_pre_hook(lambda module, args: states.append(args[0]))]
    hooks += [block.register_forward_hook(lambda module, args, out: states.append(out)) for block in blocks]
    try:
        with torch.no_grad():
            teacher.forward_features(images)
    finally:
        for hook in hooks:
            hook.remove()
    if len(states) != len(blocks) + 1:
        raise RuntimeError(f"teacher ran {len(states) - 1} blocks in forward_features, expected {len(blocks)}")
    return torch.stack(states)


def teacher_phases(teacher: nn.Module, images: Tensor, eps: float = 0.1, min_size: int = 1,
                   ) -> tuple[tuple[tuple[int, ...], ...], Tensor]:
    """The teacher's phases by recursive max-cut of the layer dissimilarity of its block outputs on ``images``, and
    that ``(L, L)`` dissimilarity."""
    states = teacher_states(teacher, images)[1:]
    weights = layer_dissimilarity(states, num_prefix_tokens=int(getattr(teacher, "num_prefix_tokens", 1)))
    phases = max_cut_phases(weights, eps=eps, min_size=min_size)
    return check_phases(phases, len(states)), weights


def _token_mse(pred: Tensor, target: Tensor, groups: Sequence[tuple[slice, float]] | None) -> Tensor:
    """Plain MSE, or ``sum_g w_g MSE_g / sum_g w_g`` over token groups ``(slice, weight)``."""
    if groups is None:
        return (pred - target).square().mean()
    total = sum(w for _, w in groups)
    return sum(w * (pred[:, s] - target[:, s]).square().mean() for s, w in groups) / total


def _groups(model: Raptor, weights: Sequence[float] | None) -> list[tuple[slice, float]] | None:
    if weights is None:
        return None
    if len(weights) != 3 or any(isinstance(w, bool) or not isinstance(w, int | float) or w < 0 for w in weights):
        raise ValueError(f"token_weights must be three numbers >= 0 (class, register, patch tokens), got {weights!r}")
    cls = 1 if model.cls_token is not None else 0
    reg = model.num_reg_tokens
    spans = [(slice(0, cls), weights[0]), (slice(cls, cls + reg), weights[1]), (slice(cls + reg, None), weights[2])]
    groups = [(s, float(w)) for (s, w), size in zip(spans, (cls, reg, 1), strict=True) if size and w > 0]
    if not groups:
        raise ValueError(f"token_weights {weights!r} give no weight to any token this model has")
    return groups


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup * steps`` steps, then cosine decay to 1e-3 of the base rate."""
    ramp = max(1, int(warmup * steps))

    def factor(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        progress = (step - ramp) / max(1, steps - ramp)
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _split(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], labels
    raise TypeError(f"data must give image tensors or (images, labels) pairs, got a {type(batch).__name__}")


def _is_pair(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(d, Tensor) for d in data)


def _check_data(data: Data, name: str) -> None:
    if isinstance(data, Tensor) or _is_pair(data):
        images = data if isinstance(data, Tensor) else data[0]
        if images.dim() != 4 or not len(images):
            raise ValueError(f"{name} images must be a non-empty (B, C, H, W) tensor, got shape {tuple(images.shape)}")
        if _is_pair(data) and data[1].shape != (len(images),):
            raise ValueError(f"{name} labels must have shape ({len(images)},), got {tuple(data[1].shape)}")
        return
    if not isinstance(data, Iterable) or isinstance(data, str | bytes):
        raise TypeError(f"{name} must be images (B, C, H, W), an (images, labels) pair of tensors or an iterable of "
                        f"batches, got {type(data).__name__}")


def _training_batches(data: Data, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Random batches from tensors, or the batches of an iterable, cycled."""
    if isinstance(data, Tensor) or _is_pair(data):
        images = data if isinstance(data, Tensor) else data[0]
        while True:
            yield images[torch.randint(len(images), (min(batch_size, len(images)),), generator=generator)]
    while True:
        empty = True
        for batch in data:
            empty = False
            yield _split(batch)[0]
        if empty:
            raise ValueError("data gave no batches")


def _eval_batches(data: Data, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    if isinstance(data, Tensor) or _is_pair(data):
        images, labels = (data, None) if isinstance(data, Tensor) else data
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size], None if labels is None else labels[i:i + batch_size]
        return
    for batch in data:
        yield _split(batch)


def evaluate_raptor(surrogate: Raptor, teacher: nn.Module, data: Data, batch_size: int = 256,
                    ) -> dict[str, Any]:
    """Top-1 accuracies of ``teacher`` and ``surrogate`` (None without labels), their top-1 agreement and, per
    phase, the R^2 of the surrogate's autoregressive state against the teacher's at the phase's last layer."""
    _check_data(data, "data")
    device = next(iter(surrogate.parameters())).device
    modes = teacher.training, surrogate.training
    teacher.eval()
    surrogate.eval()
    ends = [phase[-1] + 1 for phase in surrogate.phases]
    residual = torch.zeros(len(ends), dtype=torch.float64)
    sums: list[Tensor | float] = [0.0] * len(ends)
    squares: list[Tensor | float] = [0.0] * len(ends)
    tokens = 0
    count = agree = teacher_right = surrogate_right = 0
    labelled = True
    try:
        with torch.no_grad():
            for images, labels in _eval_batches(data, batch_size):
                images = images.to(device)
                states = teacher_states(teacher, images)
                x = states[0]
                outputs = {}
                for layer, step in enumerate(surrogate.blocks, start=1):
                    x = step(x)
                    outputs[layer] = x
                for i, end in enumerate(ends):
                    target = states[end].double().flatten(0, 1)
                    residual[i] += (outputs[end].double().flatten(0, 1) - target).square().sum().cpu()
                    sums[i] = sums[i] + target.sum(0).cpu()
                    squares[i] = squares[i] + target.square().sum(0).cpu()
                tokens += states.shape[1] * states.shape[2]
                teacher_top = teacher.forward_head(teacher.norm(states[-1])).argmax(-1)
                surrogate_top = surrogate(images).argmax(-1)
                count += len(images)
                agree += int((teacher_top == surrogate_top).sum())
                if labels is None:
                    labelled = False
                else:
                    labels = labels.to(device)
                    teacher_right += int((teacher_top == labels).sum())
                    surrogate_right += int((surrogate_top == labels).sum())
    finally:
        teacher.train(modes[0])
        surrogate.train(modes[1])
    if not count:
        raise ValueError("data gave no images to evaluate")
    r2 = []
    for i in range(len(ends)):
        total = float((squares[i] - sums[i].square() / tokens).sum())
        r2.append(1.0 - float(residual[i]) / total if total > 0 else float("nan"))
    return dict(teacher_accuracy=teacher_right / count if labelled else None,
                surrogate_accuracy=surrogate_right / count if labelled else None,
                agreement=agree / count, phase_r2=r2)


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _runs(layers: Sequence[int]) -> list[list[int]]:
    """Contiguous runs of sorted layer indices: ``[0, 1, 4] -> [[0, 1], [4]]``."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and runs[-1][-1] + 1 == layer:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return runs


def _fit_phase(block: nn.Module, layers: Sequence[int], batches: Iterator[Tensor], teacher: nn.Module, steps: int,
               lr: float, weight_decay: float, warmup: float, anneal: float, clip: float) -> list[float]:
    """Stage 2 of the module docstring for one phase's block."""
    optimizer = torch.optim.AdamW(block.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = _schedule(optimizer, steps, warmup)
    runs = _runs(layers)
    index = torch.tensor(layers)
    losses = []
    for step in range(steps):
        states = teacher_states(teacher, next(batches))
        ratio = max(0.0, 1.0 - step / (anneal * steps)) if anneal > 0 else 0.0
        loss = states.new_zeros(())
        if ratio > 0:
            inputs = states[index].flatten(0, 1)
            times = (index + 1).to(states.device, states.dtype).repeat_interleave(states.shape[1])
            loss = loss + ratio * (block(inputs, times) - states[index + 1].flatten(0, 1)).square().mean()
        if ratio < 1:
            free = states.new_zeros(())
            for run in runs:
                x = states[run[0]]
                for layer in run:
                    x = block(x, x.new_full((x.shape[0],), float(layer + 1)))
                    free = free + (x - states[layer + 1]).square().mean()
            loss = loss + (1 - ratio) * free / len(layers)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(block.parameters(), clip)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def _fit_joint(surrogate: Raptor, batches: Iterator[Tensor], teacher: nn.Module, steps: int, lr: float,
               weight_decay: float, warmup: float, clip: float, groups: list[tuple[slice, float]] | None,
               ) -> list[float]:
    """Stage 3 of the module docstring: all blocks, autoregressive over the whole depth."""
    parameters = list(surrogate.recurrent_blocks.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = _schedule(optimizer, steps, warmup)
    losses = []
    for _ in range(steps):
        states = teacher_states(teacher, next(batches))
        x = states[0]
        loss = states.new_zeros(())
        for layer, step in enumerate(surrogate.blocks, start=1):
            x = step(x)
            loss = loss + _token_mse(x, states[layer], groups)
        loss = loss / len(surrogate.blocks)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def fit_raptor(
    teacher: nn.Module,
    data: Data,
    phases: Sequence[Sequence[int]] | None = None,
    *,
    eval_data: Data | None = None,
    eps: float = 0.1,
    min_size: int = 1,
    similarity_images: int = 256,
    phase_steps: int = 300,
    joint_steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-4,
    weight_decay: float = 1e-4,
    warmup: float = 0.05,
    teacher_forcing_anneal: float = 0.25,
    token_weights: Sequence[float] | None = (0.45, 0.10, 0.45),
    grad_clip: float = 1.0,
    seed: int = 0,
    **block_kwargs: Any,
) -> tuple[Raptor, RaptorReport]:
    """Fit a Raptor surrogate to ``teacher`` (module docstring for the three stages).

    Args:
        teacher: a trained timm ``VisionTransformer`` (left unchanged; run in eval mode).
        data: training images ``(B, C, H, W)``, an ``(images, labels)`` pair of tensors (random batches of
            ``batch_size`` are drawn), or an iterable of such batches (a ``DataLoader``; cycled).
        phases: the teacher's layers (0-based) per shared block, covering each layer once; None computes them
            by max-cut of the layer dissimilarity on the first ``similarity_images`` training images with ``eps``
            and ``min_size`` (:func:`teacher_phases`).
        eval_data: where the report's accuracies and R^2 are measured (default: ``data``).
        phase_steps, joint_steps: optimiser steps per phase (teacher forcing) and for the joint autoregressive
            stage; 0 skips a stage.
        token_weights: the joint stage's weights of the class, register and patch tokens (None: plain MSE).
        warmup: fraction of each stage's steps of linear learning-rate warm-up.
        **block_kwargs: :class:`visattn.models.raptor.RaptorBlock` options (``mlp``, ``mlp_ratio``, ...).

    Returns:
        the fitted surrogate (train mode off) and a :class:`RaptorReport`.
    """
    _check_data(data, "data")
    if eval_data is not None:
        _check_data(eval_data, "eval_data")
    for name, value, minimum in (("phase_steps", phase_steps, 0), ("joint_steps", joint_steps, 0),
                                 ("batch_size", batch_size, 1), ("similarity_images", similarity_images, 2)):
        _positive_int(value, name, minimum)
    for name, value in (("lr", lr), ("weight_decay", weight_decay), ("grad_clip", grad_clip)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    for name, value in (("warmup", warmup), ("teacher_forcing_anneal", teacher_forcing_anneal)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    training = teacher.training
    teacher.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        device = next(iter(teacher.parameters())).device
        batches = (b.to(device) for b in _training_batches(data, batch_size, generator))
        dissimilarity = None
        depth = len(getattr(teacher, "blocks", ()))
        if phases is None:
            images = torch.cat(list(itertools.islice(
                (b for b, _ in _eval_batches(data, batch_size)), math.ceil(similarity_images / batch_size))))
            phases, dissimilarity = teacher_phases(teacher, images[:similarity_images].to(device), eps, min_size)
        checked = check_phases(phases, depth if depth else None)
        torch.manual_seed(seed)
        surrogate = raptor_from_teacher(teacher, checked, **block_kwargs)
        surrogate.train()
        report = RaptorReport(phases=checked, dissimilarity=dissimilarity)
        groups = _groups(surrogate, token_weights)
        for p, layers in enumerate(checked):
            losses = _fit_phase(surrogate.recurrent_blocks[p], layers, batches, teacher, phase_steps, lr,
                                weight_decay, warmup, teacher_forcing_anneal, grad_clip)
            report.phase_losses.append(losses)
            log.info("raptor phase %d (layers %s): loss %s", p, list(layers), losses[-1] if losses else None)
        report.autoregressive_losses = _fit_joint(surrogate, batches, teacher, joint_steps, lr, weight_decay,
                                                  warmup, grad_clip, groups)
        surrogate.eval()
        measured = evaluate_raptor(surrogate, teacher, data if eval_data is None else eval_data, batch_size)
    finally:
        teacher.train(training)
    report.phase_r2 = measured["phase_r2"]
    report.teacher_accuracy = measured["teacher_accuracy"]
    report.surrogate_accuracy = measured["surrogate_accuracy"]
    report.agreement = measured["agreement"]
    report.evaluated_on = "training data" if eval_data is None else "eval_data"
    return surrogate, report
