"""A small, exact classification trainer: seeded, resumable to the bit, data parallel under ``torchrun``.

- Seeded: :func:`~visattn.train.checkpoint.seed_everything` runs before the model is built, and the data order is
  :class:`~torch.utils.data.DistributedSampler`'s (a permutation seeded by ``seed + epoch``), so two runs with one
  config take the same steps.
- Data parallel: each of ``W`` processes takes ``batch_size / W`` samples of every global batch (the sampler's
  rank-strided share of one permutation, so the union over ranks is the single-process batch) and DDP averages the
  gradients; the logged loss is the mean over ranks. With one process and the same global batch the loss curve is
  the same up to float rounding (tests/train/test_distributed.py).
- Resumable: a checkpoint (model, optimiser, scheduler, gradient scaler, step and data position, every rank's random
  generators) is written every ``checkpoint_every`` steps and at the end; ``fit(resume=True)`` continues from it,
  and the final checkpoint is byte-identical to an uninterrupted run's (tests/train/test_trainer.py).
- Mixed precision where the device has it: ``precision="auto"`` autocasts to bfloat16 on GPUs that support it and
  stays float32 on CPU; ``"bf16"`` also autocasts on CPU; ``"fp16"`` (CUDA only) adds a gradient scaler.
- Gradient checkpointing through timm's ``set_grad_checkpointing``.

Optimiser: AdamW (no weight decay on biases, norms and other 1-d parameters), learning rate warmed up linearly for
``warmup_steps`` and then cosine-annealed to zero at ``steps``; gradients clipped to norm ``grad_clip``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from . import checkpoint as ckpt
from .distributed import DistContext, all_gather_objects, all_reduce_mean, all_reduce_sum, barrier
from .metrics import MetricsLog

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """What a run does; ``batch_size`` is the global batch, split evenly over the processes."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float | None = 1.0
    seed: int = 0
    eval_every: int = 50
    checkpoint_every: int = 50
    log_every: int = 1
    eval_batch_size: int = 256
    precision: str = "auto"
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "log_every", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (on every rank): the metric records of the whole run (resumed parts
    included), the last step, and the training throughput of this call."""

    records: list[dict[str, Any]]
    step: int
    images_per_s: float
    train_seconds: float
    parameters: int
    checkpoint: Path | None = None
    evals: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        """The training loss of every logged step, in order."""
        return [r["loss"] for r in self.records if r.get("kind") == "train"]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision 'fp16' needs a CUDA device (it uses a gradient scaler), got {device}; "
                             "use 'bf16' on CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def warmup_cosine(steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at a step: linear warmup over ``warmup_steps``, then cosine to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _check_data(name: str, data: tuple[Tensor, Tensor]) -> None:
    if not (isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise TypeError(f"{name} must be a tuple (images, labels) of tensors, got {type(data).__name__}")
    if data[0].shape[0] != data[1].shape[0]:
        raise ValueError(f"{name} holds {data[0].shape[0]} images but {data[1].shape[0]} labels")


class Trainer:
    """Trains ``build_model()`` on ``train`` (images, labels) and evaluates it on each of ``evals``.

    ``out_dir`` holds ``checkpoint.pt`` and ``metrics.jsonl`` (and ``tensorboard/`` with ``tensorboard=True`` and
    the package installed); only rank 0 writes. ``on_record`` is called on rank 0 with every metrics record (the
    command line draws its progress bar from it).
    """

    def __init__(self, build_model: Callable[[], nn.Module], train: tuple[Tensor, Tensor],
                 evals: Mapping[str, tuple[Tensor, Tensor]], config: TrainConfig, *,
                 context: DistContext | None = None, out_dir: str | Path | None = None, tensorboard: bool = False,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        _check_data("train", train)
        for name, data in evals.items():
            _check_data(f"evals[{name!r}]", data)
        self.context = context or DistContext()
        if config.batch_size % self.context.world_size:
            raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {self.context.world_size} "
                             "processes")
        self.local_batch = config.batch_size // self.context.world_size
        self.sampler = DistributedSampler(TensorDataset(*train), num_replicas=self.context.world_size,
                                          rank=self.context.rank, shuffle=True, seed=config.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set ({len(train[1])} samples) is smaller than one global batch "
                             f"({config.batch_size})")
        self.build_model, self.train_data, self.evals, self.config = build_model, train, dict(evals), config
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.tensorboard, self.on_record = tensorboard, on_record
        self.autocast_dtype = resolve_precision(config.precision, self.context.device)

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_NAME

    def _setup(self) -> None:
        config, device = self.config, self.context.device
        ckpt.seed_everything(config.seed)
        model = self.build_model().to(device)
        if config.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise ValueError(f"grad_checkpointing needs a model with set_grad_checkpointing (timm models have "
                                 f"it); {type(model).__name__} has not")
            model.set_grad_checkpointing(True)
        self.model = model
        self.parameters = sum(p.numel() for p in model.parameters())
        self.optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           warmup_cosine(config.steps, config.warmup_steps))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        if self.context.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp: nn.Module = DistributedDataParallel(model, device_ids=ids)
        else:
            self.ddp = model

    def _state(self, step: int) -> dict[str, Any]:
        rngs = all_gather_objects(ckpt.rng_state(), self.context)
        return {"step": step, "epoch": step // self.steps_per_epoch, "batch_in_epoch": step % self.steps_per_epoch,
                "world_size": self.context.world_size, "config": asdict(self.config),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rngs}

    def _save(self, step: int) -> None:
        state = self._state(step)
        if self.context.is_main and self.checkpoint_path is not None:
            ckpt.save_checkpoint(self.checkpoint_path, state)
        barrier(self.context)

    def _restore(self) -> int:
        state = ckpt.load_checkpoint(self.checkpoint_path, map_location=self.context.device)
        saved = dict(state["config"])
        ours = asdict(self.config)
        differ = {k: (saved.get(k), v) for k, v in ours.items() if k not in ("eval_every", "checkpoint_every",
                                                                            "log_every") and saved.get(k) != v}
        if differ:
            raise ValueError(f"checkpoint {str(self.checkpoint_path)!r} was written by another config: "
                             + ", ".join(f"{k}={a!r} there, {b!r} now" for k, (a, b) in differ.items()))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.context.rank % len(rngs)])
        step = int(state["step"])
        if (state["epoch"], state["batch_in_epoch"]) != (step // self.steps_per_epoch, step % self.steps_per_epoch):
            raise ValueError(f"checkpoint {str(self.checkpoint_path)!r} data position does not match its step "
                             "(another training set size?)")
        return step

    def _batch(self, step: int, order_cache: dict[int, list[int]]) -> tuple[Tensor, Tensor]:
        epoch, offset = divmod(step, self.steps_per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            self.sampler.set_epoch(epoch)
            order_cache[epoch] = list(iter(self.sampler))
        index = torch.tensor(order_cache[epoch][offset * self.local_batch:(offset + 1) * self.local_batch])
        device = self.context.device
        return self.train_data[0][index].to(device), self.train_data[1][index].to(device)

    def _autocast(self) -> Any:
        device = self.context.device
        return torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _train_step(self, images: Tensor, labels: Tensor) -> Tensor:
        self.ddp.train()
        with self._autocast():
            loss = F.cross_entropy(self.ddp(images).float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return all_reduce_mean(loss.detach(), self.context)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Accuracy and mean loss on every eval set, each rank taking every ``world_size``-th sample."""
        return self.evaluate_sets(self.evals)

    @torch.no_grad()
    def evaluate_sets(self, sets: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, dict[str, float]]:
        """Accuracy and mean loss of the model (as trained by :meth:`fit`) on each of ``sets``."""
        self.model.eval()
        device, rank, world = self.context.device, self.context.rank, self.context.world_size
        results = {}
        for name, (images, labels) in sets.items():
            mine = torch.arange(rank, len(labels), world)
            totals = torch.zeros(3, dtype=torch.float64, device=device)
            for start in range(0, len(mine), self.config.eval_batch_size):
                index = mine[start:start + self.config.eval_batch_size]
                x, y = images[index].to(device), labels[index].to(device)
                with self._autocast():
                    logits = self.model(x).float()
                totals[0] += (logits.argmax(-1) == y).sum()
                totals[1] += F.cross_entropy(logits, y, reduction="sum")
                totals[2] += len(index)
            totals = all_reduce_sum(totals, self.context).tolist()
            results[name] = {"accuracy": totals[0] / totals[2], "loss": totals[1] / totals[2]}
        return results

    def _emit(self, metrics: MetricsLog, record: dict[str, Any]) -> None:
        metrics.write(record)
        if self.on_record is not None and self.context.is_main:
            self.on_record(record)

    def fit(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (from the checkpoint in ``out_dir`` with ``resume`` when one exists).

        ``stop_after`` ends the call after that many steps in total without a final checkpoint or evaluation,
        as a killed run would (the resume tests use it)."""
        self._setup()
        step = 0
        path = self.checkpoint_path
        if resume and path is not None and path.exists():
            step = self._restore()
            log.info("resumed from %s at step %d", path, step)
        main = self.context.is_main and self.out_dir is not None
        metrics = MetricsLog(self.out_dir / METRICS_NAME if main else None,
                             self.out_dir / "tensorboard" if main and self.tensorboard else None)
        metrics.open(resume_step=step if resume else None)
        config = self.config
        order: dict[int, list[int]] = {}
        train_seconds, images_seen = 0.0, 0
        evals: dict[str, dict[str, float]] = {}
        try:
            while step < config.steps:
                if stop_after is not None and step >= stop_after:
                    return TrainResult(metrics.records, step, 0.0, train_seconds, self.parameters)
                start = time.perf_counter()
                images, labels = self._batch(step, order)
                loss = self._train_step(images, labels)
                logged = step % config.log_every == 0 or step + 1 == config.steps
                loss_value = float(loss) if logged else math.nan
                elapsed = time.perf_counter() - start
                train_seconds += elapsed
                images_seen += config.batch_size
                step += 1
                if logged:
                    self._emit(metrics, {"kind": "train", "step": step, "loss": loss_value,
                                         "lr": self.scheduler.get_last_lr()[0],
                                         "images_per_s": config.batch_size / elapsed})
                if step % config.eval_every == 0 or step == config.steps:
                    evals = self.evaluate()
                    record: dict[str, Any] = {"kind": "eval", "step": step}
                    for name, values in evals.items():
                        record[f"accuracy/{name}"] = values["accuracy"]
                        record[f"loss/{name}"] = values["loss"]
                    self._emit(metrics, record)
                if step % config.checkpoint_every == 0 or step == config.steps:
                    self._save(step)
        finally:
            metrics.close()
        speed = images_seen / train_seconds if train_seconds else 0.0
        return TrainResult(metrics.records, step, speed, train_seconds, self.parameters, path, evals)
