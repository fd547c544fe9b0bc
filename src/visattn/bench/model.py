"""Model-level benchmark: a timm model with its attention swapped by :func:`visattn.replace_attention`, in images
per second, forward and forward + backward, against the unmodified model measured interleaved in the same run.

>>> from visattn.bench.model import ModelBenchSettings, run_model_bench
>>> report = run_model_bench("vit_small_patch16_224", ["softmax", "neighborhood", "window"], [224, 448],
...                          ModelBenchSettings(batch=8))
>>> report.write_json("vit_s.json")

For each image size the model is created once, randomly initialised (``pretrained=False``, nothing downloaded)
with ``img_size`` passed to ``timm.create_model``, so that its patch grid follows the image; every mixer gets a
deep copy of it with the attention replaced (weights kept). For each mode (forward under ``no_grad`` in eval
mode; forward + backward of ``logits.sum()`` to every parameter in train mode) every variant makes ``warmup``
untimed calls and one probe call checked against the time budget, then ``repeats`` samples of all variants are
taken in rounds (:func:`visattn.bench.timing.interleaved_bursts`), each sample a burst lasting at least
``min_sample_s``. The unmodified model is the first variant, so every ratio is to a model timed in the same
rounds. Peak memory is one profiled call per variant and mode (:mod:`visattn.bench.memory`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .budget import measured_time_skip_reason, predicted_time_skip_reason
from .case import BenchCase, parse_case
from .memory import peak_memory_bytes
from .prebuild import prebuild_native_kernels
from .record import environment
from .settings import DTYPES, check_dtype_and_device
from .timing import calls_per_sample, hodges_lehmann_ratio, interleaved_bursts, summarize, synchronizer, time_call

UNMODIFIED = "unmodified"
"""The label of the model as timm builds it (its own attention), the baseline of every ratio."""

MODES = ("forward", "forward+backward")

DEFAULT_IMG_SIZES: tuple[int, ...] = (224,)

MODEL_ERRORS = (ValueError, TypeError, NotImplementedError, RuntimeError, MemoryError)
"""Errors that skip a variant at a size (with the message as reason) instead of stopping the run: a grid the
mixer rejects, an attention ``replace_attention`` cannot swap, a shape the model cannot take, memory."""


@dataclass(frozen=True)
class ModelBenchSettings:
    """How every (variant, image size, mode) is measured: ``batch`` random images ``(3, s, s)`` of ``dtype`` on
    ``device``; ``warmup`` untimed calls and one probe call (skipped above ``time_budget_s`` seconds, or when the
    time predicted from the smaller size, quadratic in tokens, exceeds it), then ``repeats`` bursts of at least
    ``min_sample_s`` seconds; noisy above ``spread_limit`` (interquartile range over median). ``backward`` adds
    the forward + backward mode; ``measure_memory`` one profiled call per variant and mode."""

    batch: int = 8
    repeats: int = 3
    warmup: int = 1
    min_sample_s: float = 0.1
    spread_limit: float = 0.25
    backward: bool = True
    measure_memory: bool = True
    time_budget_s: float = 60.0
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in {"batch": 1, "repeats": 1, "warmup": 1, "seed": 0}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        for name in ("min_sample_s", "spread_limit", "time_budget_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")
        check_dtype_and_device(self.dtype, self.device)
        for name in ("backward", "measure_memory"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.backward else MODES[:1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelRecord:
    """One (variant, image size, mode). ``label`` is :data:`UNMODIFIED` or the mixer case's label; ``grid`` the
    patch grid and ``tokens`` the sequence length (prefix tokens included). Times are milliseconds per call of a
    whole batch (median and quartiles over the samples); ``images_per_s = batch / median``;
    ``ratio_to_unmodified`` is this variant's speed over the unmodified model's: the Hodges-Lehmann estimate
    (:func:`~visattn.bench.timing.hodges_lehmann_ratio`) of the per-round ratios of their burst times, taken in the
    same rounds (> 1: faster). ``noisy`` when this variant's or the baseline's interquartile range exceeds
    ``spread_limit`` times its median. ``skipped`` says why nothing was timed."""

    model: str
    label: str
    mixer: str | None
    kwargs: dict[str, Any]
    img_size: int
    grid: list[int] | None
    tokens: int | None
    batch: int
    mode: str
    median_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    relative_spread: float | None = None
    calls_per_sample: int | None = None
    samples_ms: list[float] | None = None
    images_per_s: float | None = None
    ratio_to_unmodified: float | None = None
    peak_memory_bytes: int | None = None
    noisy: bool | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=repr))


@dataclass
class ModelBenchReport:
    """A model run: the model name, settings, records in the order measured, and where it ran."""

    model: str
    settings: ModelBenchSettings
    records: list[ModelRecord] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=environment)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "model", "model": self.model, "environment": self.env, "settings": self.settings.to_dict(),
                "records": [r.to_dict() for r in self.records],
                "noisy_records": sum(bool(r.noisy) for r in self.records)}

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as indented JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


@dataclass
class _Variant:
    label: str
    case: BenchCase | None
    model: nn.Module | None
    error: str | None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {m: [] for m in MODES})


def check_model_name(name: str) -> str:
    """``name`` if timm knows the model (visattn's ``visattn_*`` models registered first), else ``ValueError``
    (before anything is built or downloaded)."""
    import timm

    import visattn.models  # noqa: F401  (registers visattn_* in timm)

    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"model must be a timm model name like 'vit_small_patch16_224', got {name!r}")
    return name


def _create(name: str, img_size: int, settings: ModelBenchSettings, **kwargs: Any) -> nn.Module:
    import timm

    torch.manual_seed(settings.seed)
    model = timm.create_model(name, pretrained=False, img_size=img_size, **kwargs)
    return model.to(device=settings.device, dtype=DTYPES[settings.dtype])


def _swap(base: nn.Module, case: BenchCase) -> nn.Module:
    from ..nn import replace_attention

    return replace_attention(copy.deepcopy(base), case.name, **case.kwargs)


def _grid_and_tokens(model: nn.Module) -> tuple[list[int] | None, int | None]:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        return None, None
    return [int(g) for g in grid], math.prod(int(g) for g in grid) + int(getattr(model, "num_prefix_tokens", 0))


def _step(model: nn.Module, images: torch.Tensor, mode: str) -> Callable[[], None]:
    if mode == "forward":
        def forward() -> None:
            with torch.no_grad():
                model(images)

        return forward
    params = [p for p in model.parameters() if p.requires_grad]

    def forward_backward() -> None:
        torch.autograd.grad(model(images).float().sum(), params, allow_unused=True)

    return forward_backward


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")


def _probe(step: Callable[[], None], sync: Callable[[], None], settings: ModelBenchSettings,
           history: list[tuple[int, float]], tokens: int) -> tuple[float | None, str | None]:
    """Warm-up calls, then one timed probe: its seconds and None, or None and why the variant is skipped."""
    reason = predicted_time_skip_reason(history, tokens, settings.time_budget_s)
    if reason:
        return None, reason
    try:
        for _ in range(settings.warmup):
            step()
        seconds = time_call(step, sync)
    except MODEL_ERRORS as err:
        return None, _reason(err)
    reason = measured_time_skip_reason(seconds, settings.time_budget_s)
    return (None, reason) if reason else (seconds, None)


def _measure_mode(name: str, img_size: int, variants: list[_Variant], images: torch.Tensor, mode: str,
                  settings: ModelBenchSettings) -> list[ModelRecord]:
    s = settings
    sync = synchronizer(torch.device(s.device))
    records, steps, probes = [], [], []
    for variant in variants:
        grid, tokens = _grid_and_tokens(variant.model) if variant.model is not None else (None, None)
        mixer = None if variant.case is None else variant.case.name
        kwargs = {} if variant.case is None else dict(variant.case.kwargs)
        record = ModelRecord(name, variant.label, mixer, kwargs, img_size, grid, tokens, s.batch, mode,
                             skipped=variant.error)
        records.append(record)
        if variant.model is None:
            continue
        variant.model.train(mode != "forward")
        step = _step(variant.model, images, mode)
        seconds, record.skipped = _probe(step, sync, s, variant.history[mode], tokens or img_size**2)
        if seconds is not None:
            steps.append((record, variant, step))
            probes.append(seconds)
    if not steps:
        return records
    calls = [calls_per_sample(p, s.min_sample_s) for p in probes]
    samples = interleaved_bursts([step for _, _, step in steps], calls, s.repeats, sync)
    for (record, variant, step), count, times in zip(steps, calls, samples, strict=True):
        timing = summarize(times)
        record.median_ms, record.p25_ms, record.p75_ms = timing.median_ms, timing.p25_ms, timing.p75_ms
        record.relative_spread, record.calls_per_sample = timing.relative_spread, count
        record.samples_ms = list(timing.samples_ms)
        record.images_per_s = s.batch / (timing.median_ms / 1e3)
        record.noisy = timing.relative_spread > s.spread_limit
        variant.history[mode].append((record.tokens or img_size**2, timing.median_ms / 1e3))
        if s.measure_memory:
            record.peak_memory_bytes = peak_memory_bytes(step, torch.device(s.device))
    base = records[0]
    if base.median_ms is not None:
        for record in records:
            if record.median_ms is not None:
                record.ratio_to_unmodified = hodges_lehmann_ratio(
                    [b / m for b, m in zip(base.samples_ms, record.samples_ms, strict=True)])
                record.noisy = bool(record.noisy or base.noisy)
    return records


def _as_case(case: BenchCase | str) -> BenchCase:
    if isinstance(case, BenchCase):
        return case
    if isinstance(case, str):
        return parse_case(case)
    raise TypeError(f"mixers must hold BenchCase objects or strings like 'name:key=value', got {case!r}")


def iter_model_bench(model: str, mixers: Iterable[BenchCase | str], img_sizes: Iterable[int] | None = None,
                     settings: ModelBenchSettings | None = None) -> Iterator[ModelRecord]:
    """Yield the records of one image size at a time (unmodified model first, then each mixer; forward, then
    forward + backward), smallest size first. Arguments as :func:`run_model_bench`."""
    settings = ModelBenchSettings() if settings is None else settings
    if not isinstance(settings, ModelBenchSettings):
        raise TypeError(f"settings must be a ModelBenchSettings, got {type(settings).__name__}")
    check_model_name(model)
    cases = [_as_case(c) for c in mixers]
    sizes = list(DEFAULT_IMG_SIZES if img_sizes is None else img_sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"img_sizes must be positive ints, got {sizes!r}")
    if torch.device(settings.device).type == "cpu":
        prebuild_native_kernels()
    labels = baseline_labels(model) + [c.label for c in cases]
    histories = {label: {m: [] for m in MODES} for label in labels}
    generator = torch.Generator().manual_seed(settings.seed)
    for img_size in sorted(set(sizes)):
        variants = _variants(model, img_size, cases, settings, histories)
        images = torch.randn((settings.batch, 3, img_size, img_size), generator=generator)
        images = images.to(device=settings.device, dtype=DTYPES[settings.dtype])
        for mode in settings.modes:
            yield from _measure_mode(model, img_size, variants, images, mode, settings)


def baseline_labels(model: str) -> list[str]:
    """The labels of the variants before the mixers: :data:`UNMODIFIED` for a timm model; ``["timm NAME",
    model]`` for a ``visattn_*`` model with a timm counterpart NAME (the baseline of its ratios); ``[model]`` for a
    ``visattn_*`` model without one."""
    from ..models import timm_counterpart

    if not model.startswith("visattn_"):
        return [UNMODIFIED]
    counterpart = timm_counterpart(model)
    return [model] if counterpart is None else [f"timm {counterpart}", model]


def _variants(model: str, img_size: int, cases: Sequence[BenchCase], settings: ModelBenchSettings,
              histories: dict[str, dict[str, list[tuple[int, float]]]]) -> list[_Variant]:
    baselines = baseline_labels(model)
    names = [label.removeprefix("timm ") if label != UNMODIFIED else model for label in baselines]
    try:
        built = [_create(name, img_size, settings) for name in names]
    except MODEL_ERRORS as err:
        reason = f"cannot create {', '.join(names)} at img_size={img_size}: {_reason(err)}"
        return [_Variant(label, case, None, reason, histories[label])
                for label, case in [*((b, None) for b in baselines), *((c.label, c) for c in cases)]]
    variants = [_Variant(label, None, net, None, histories[label]) for label, net in zip(baselines, built, strict=True)]
    base = built[-1]
    for case in cases:
        try:
            if model.startswith("visattn_"):
                swapped, error = _create(model, img_size, settings, mixer=case.name, **case.kwargs), None
            else:
                swapped, error = _swap(base, case), None
        except MODEL_ERRORS as err:
            swapped, error = None, f"cannot replace the attention: {_reason(err)}"
        variants.append(_Variant(case.label, case, swapped, error, histories[case.label]))
    return variants


def run_model_bench(model: str, mixers: Iterable[BenchCase | str], img_sizes: Iterable[int] | None = None,
                    settings: ModelBenchSettings | None = None,
                    on_record: Callable[[ModelRecord], None] | None = None) -> ModelBenchReport:
    """Benchmark timm ``model`` as built and with its attention replaced by each of ``mixers``.

    Args:
        model: a timm model name whose attention :func:`visattn.replace_attention` can swap (ViT, DeiT, ...), or
            a ``visattn_*`` model: then its timm counterpart (:func:`visattn.models.timm_counterpart`), where it
            has one, is the first variant and the baseline of every ratio (:func:`baseline_labels`), and each
            mixer is passed to ``timm.create_model(model, mixer=...)`` (models that take no mixer skip it).
        mixers: registry names or ``"name:key=value,..."`` strings (or :class:`BenchCase` objects).
        img_sizes: image sides passed to ``timm.create_model(img_size=...)``; :data:`DEFAULT_IMG_SIZES` if None.
        settings: :class:`ModelBenchSettings`; the defaults when None.
        on_record: sees each record as it comes (progress bars).
    """
    settings = ModelBenchSettings() if settings is None else settings
    report = ModelBenchReport(model, settings)
    for record in iter_model_bench(model, mixers, img_sizes, settings):
        report.records.append(record)
        if on_record is not None:
            on_record(record)
    return report
