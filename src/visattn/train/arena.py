"""The arena: the same small backbone trained with each chosen mixer on one procedural task, evaluated at the
training size and at larger ones (extrapolation), on one process or many (DDP under ``torchrun``).

Each mixer gets a fresh model from the same seed, the same data and the same :class:`~visattn.train.trainer.
TrainConfig`; its checkpoint and metrics go to ``out/<mixer label>/``. The default backbone is
``visattn_vit_tiny_patch16_224`` shrunk to :data:`SMALL_VIT` (patch 4, width 64, depth 2, 2 heads, one input
channel, ``dynamic_img_size`` so it takes larger test images, position embeddings interpolated); any other
``visattn_*`` or timm model is built by name and its attention replaced with :func:`visattn.replace_attention`.

Mixers that are causal unless told otherwise (``lssa``, ``lssar``) get ``is_causal=False`` here, since image tokens
have no order; the label says so.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..bench.case import BenchCase
from ..registry import get_mixer_spec
from ..tasks.procedural import get_task, make_split
from .distributed import DistContext
from .metrics import read_metrics
from .trainer import METRICS_NAME, TrainConfig, Trainer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "visattn_vit_tiny_patch16_224"
SMALL_VIT: dict[str, Any] = dict(patch_size=4, embed_dim=64, depth=2, num_heads=2)
"""The default backbone's shape: small enough for a CPU, deep enough to need attention."""


@dataclass(frozen=True)
class ArenaConfig:
    """One arena run: the mixers to compare, the task and its sizes, the backbone and the training recipe."""

    mixers: tuple[BenchCase, ...]
    task: str = "digits"
    size: int = 32
    eval_sizes: tuple[int, ...] = (32, 48, 64)
    train_count: int = 2000
    test_count: int = 500
    data_seed: int = 0
    model: str = DEFAULT_MODEL
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.mixers:
            raise ValueError("mixers must name at least one mixer")
        labels = [mixer_label(m) for m in self.mixers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"mixers must differ, got {', '.join(labels)}")
        spec = get_task(self.task)
        spec.check_size(self.size)
        for size in self.eval_sizes:
            spec.check_size(size)
        for name in ("train_count", "test_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        config = asdict(self)
        config["mixers"] = [mixer_label(m) for m in self.mixers]
        return config


def with_image_defaults(case: BenchCase) -> BenchCase:
    """``case`` with ``is_causal=False`` added for mixers that are causal by default (image tokens have no order)."""
    if get_mixer_spec(case.name).causal_default and "is_causal" not in case.kwargs:
        return BenchCase(case.name, {**case.kwargs, "is_causal": False})
    return case


def mixer_label(case: BenchCase) -> str:
    """The name a mixer has in tables, plots and folder names (with the image defaults applied)."""
    return with_image_defaults(case).label


def folder_name(label: str) -> str:
    """A file-system-safe folder name for ``label``."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")


def build_model(config: ArenaConfig, case: BenchCase) -> nn.Module:
    """The backbone of ``config`` running ``case``'s mixer, for ``num_classes`` of the task, one input channel."""
    import timm

    from .. import models  # noqa: F401  (registers visattn_*)
    from ..nn.replace import replace_attention

    case = with_image_defaults(case)
    classes = get_task(config.task).num_classes
    if config.model.startswith("visattn_vit_"):
        kwargs = {**SMALL_VIT, "img_size": config.size, "in_chans": 1, "num_classes": classes,
                  "dynamic_img_size": True, **config.model_kwargs}
        return timm.create_model(config.model, mixer=case.name, **kwargs, **case.kwargs)
    model = timm.create_model(config.model, in_chans=1, num_classes=classes, **config.model_kwargs)
    replace_attention(model, case.name, **case.kwargs)
    return model


@dataclass
class MixerResult:
    """One mixer's run: its label, parameter count, the metric records, the final accuracy per test size (None
    where the model could not run at that size; ``failures`` says why), training throughput and wall time."""

    label: str
    parameters: int
    records: list[dict[str, Any]]
    accuracy: dict[int, float | None]
    failures: dict[int, str]
    images_per_s: float
    wall_s: float

    @property
    def final_loss(self) -> float:
        losses = [r["loss"] for r in self.records if r.get("kind") == "train"]
        return losses[-1] if losses else float("nan")

    def curve(self, size: int) -> list[tuple[int, float]]:
        """(step, accuracy at ``size``) of every evaluation during training."""
        key = f"accuracy/{size}"
        return [(r["step"], r[key]) for r in self.records if r.get("kind") == "eval" and key in r]

    def as_dict(self, size: int) -> dict[str, Any]:
        """The result as JSON-ready values, with the accuracy curve at the training ``size``."""
        return {"label": self.label, "parameters": self.parameters, "final_loss": self.final_loss,
                "accuracy": {str(k): v for k, v in self.accuracy.items()},
                "failures": {str(k): v for k, v in self.failures.items()}, "images_per_s": self.images_per_s,
                "wall_s": self.wall_s, "curve": self.curve(size)}


def median_images_per_s(records: Sequence[dict[str, Any]]) -> float:
    """The median training throughput of the logged steps (robust to the first, warming-up steps and to a
    resume in between)."""
    speeds = sorted(r["images_per_s"] for r in records if r.get("kind") == "train" and "images_per_s" in r)
    return speeds[len(speeds) // 2] if speeds else 0.0


def run_arena(config: ArenaConfig, out: str | Path, *, context: DistContext | None = None, resume: bool = False,
              tensorboard: bool = False,
              on_record: Callable[[str, dict[str, Any]], None] | None = None) -> list[MixerResult]:
    """Train and evaluate every mixer of ``config`` in turn; checkpoints and metrics in ``out/<label>/``.

    ``resume`` continues each mixer from its checkpoint (a finished one is only evaluated again). ``on_record``
    gets ``(label, record)`` on rank 0 for progress displays.
    """
    context = context or DistContext()
    out = Path(out)
    train = make_split(config.task, config.size, config.train_count, config.data_seed, "train")
    tests = {size: make_split(config.task, size, config.test_count, config.data_seed, "test")
             for size in dict.fromkeys((config.size, *config.eval_sizes))}
    results = []
    for case in config.mixers:
        label = mixer_label(case)
        folder = out / folder_name(label)
        started = time.perf_counter()
        trainer = Trainer(lambda case=case: build_model(config, case), train, {str(config.size): tests[config.size]},
                          config.train, context=context, out_dir=folder, tensorboard=tensorboard,
                          on_record=None if on_record is None else (lambda r, label=label: on_record(label, r)))
        fit = trainer.fit(resume=resume)
        accuracy: dict[int, float | None] = {}
        failures: dict[int, str] = {}
        for size, data in tests.items():
            try:
                accuracy[size] = trainer.evaluate_sets({str(size): data})[str(size)]["accuracy"]
            except (RuntimeError, ValueError) as err:  # a mixer tied to the training grid (a window that no
                accuracy[size] = None                  # longer divides it): recorded, not fatal
                failures[size] = " ".join(str(err).split())[:200]
        records = read_metrics(folder / METRICS_NAME) if context.is_main else fit.records
        results.append(MixerResult(label, fit.parameters, records, accuracy, failures,
                                   median_images_per_s(records), time.perf_counter() - started))
        log.info("%s: accuracy %s, %.0f images/s", label, accuracy, results[-1].images_per_s)
    return results
