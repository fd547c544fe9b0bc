"""``visattn lens IMAGE --model NAME_OR_CHECKPOINT``: capture a ViT's attention on one image, measure it, draw it.

The model is a timm model name built with random weights unless ``--pretrained`` is given (a warning says so;
the weights come from the Hugging Face cache, and when they are not there and the Hub cannot be reached the run
stops at once and says how to provide them), or a checkpoint file saved with ``torch.save(model.state_dict())``
together with ``--model-name`` (and the ``--model-kwargs`` it was built with). The image is resized and cropped as
the model's timm data config says. The run writes into ``--out``: ``attention.png`` (rollout, gradient rollout and
the last layer's attention over the image), ``heads.png`` (layers x heads), ``metrics.png`` (metrics by layer),
``similarity.png`` (layer dissimilarity and phases), ``metrics.json`` and ``report.html`` (everything, one file).

Metrics (``--metrics``, default all that apply): ``entropy`` (mean over heads and queries of the entropy over the
grid keys, CARVE), ``distance`` (mean attention distance in patches), ``sinks`` (largest ``|x|/RMS`` per layer,
massive-activation dims and sink tokens, VAR), ``rollout``, ``grad_rollout`` (gradient rollout of the top class),
``phases`` (layer dissimilarity and max-cut phases, Raptor). Rollouts run over the captured layers only.

The output folder is checked before the model is built; bad values and unreadable files raise ``ValueError``,
which ``visattn`` prints as one line. The arguments are defined in :mod:`visattn.cli_lens`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import pickle
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from ..cli_lens import METRICS, parse_model_kwargs
from ..cli_paths import check_output_folder
from . import metrics, plots
from .capture import capture
from .metrics import SINK_TAU
from .report import Picture, Report, format_value

logger = logging.getLogger("visattn.lens")

__all__ = ["METRICS", "LensOptions", "LensOutput", "build_model", "execute", "layout", "load_image",
           "options_from", "parse_model_kwargs", "prepare", "run"]

HUB_TIMEOUT_S = 3.0
"""Seconds to wait for a connection to the Hugging Face Hub before calling it unreachable."""


@dataclass
class LensOptions:
    """Everything ``visattn lens`` needs; ``metrics=None`` means every metric that applies to the model."""

    image: Path
    model: str
    model_name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    layers: tuple[int, ...] | None = None
    metrics: tuple[str, ...] | None = None
    out: Path = Path("visattn-lens")
    query: int | None = None
    sink_tau: float = SINK_TAU
    phase_eps: float = 0.1
    seed: int = 0


@dataclass
class LensOutput:
    """The files one run wrote and what it measured."""

    report: Path
    json: Path
    pictures: list[Path]
    per_layer: dict[str, dict[int, float]]
    summary: dict[str, str]


def _register_visattn_models() -> None:
    """Import ``visattn.models`` (which registers visattn's models in timm) where that subpackage exists."""
    if importlib.util.find_spec("visattn.models") is not None:
        importlib.import_module("visattn.models")


def build_model(options: LensOptions) -> nn.Module:
    """The model in eval mode: from a checkpoint file (``--model-name`` required) or a timm model name."""
    _register_visattn_models()
    source = Path(options.model)
    if source.is_file():
        if not options.model_name:
            raise ValueError(f"--model {options.model!r} is a checkpoint file: pass --model-name with the timm "
                             "name of the architecture it was saved from")
        model = _create(options.model_name, False, options.model_kwargs)
        state = _load_checkpoint(source)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"checkpoint {options.model!r} does not fit {options.model_name} built with "
                             f"--model-kwargs {options.model_kwargs}: {err}") from err
        return model.eval()
    if options.model_name:
        raise ValueError(f"--model-name is only for checkpoint files, and --model {options.model!r} is not a file")
    model = _create(options.model, options.pretrained, options.model_kwargs)
    if not options.pretrained:
        logger.warning("%s has random weights (seed %d): pass --pretrained to load timm's weights or a checkpoint "
                       "file; attention maps of an untrained model show no learnt structure", options.model,
                       options.seed)
    return model.eval()


def _load_checkpoint(source: Path) -> dict[str, Any]:
    """The state dict saved in ``source``; ``ValueError`` for an empty, truncated or foreign file."""
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError) as err:
        reason = "the file is empty" if source.stat().st_size == 0 else f"{type(err).__name__}: {err}"
        raise ValueError(f"--model {str(source)!r} could not be read as a checkpoint saved with "
                         f"torch.save(model.state_dict(), path): {reason}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(source)!r} must hold a state_dict (saved with "
                         f"torch.save(model.state_dict(), path)), got {type(state).__name__}")
    return state


def _hub_reachable() -> bool:
    """False when Hugging Face is told to stay offline or its endpoint cannot be reached within a few seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = constants.ENDPOINT.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _weights_cached(name: str) -> bool:
    """Whether the Hugging Face cache already holds the pretrained weights of timm model ``name``."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return False
    repo, _, revision = repo.partition("@")
    for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                     "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
            return True
    return False


def _not_cached_message(name: str) -> str:
    return (f"--pretrained: the weights of {name} are not in the local cache and the Hugging Face Hub cannot be "
            f"reached (offline); download them where there is a network with `python -c \"import timm; "
            f"timm.create_model('{name}', pretrained=True)\"` and copy ~/.cache/huggingface (or set HF_HOME), or "
            f"pass a checkpoint file: --model FILE --model-name {name}")


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f"--model {name!r} is neither a checkpoint file nor a timm model name "
                         f"(see timm.list_models(), e.g. 'vit_tiny_patch16_224')")
    if pretrained and not _weights_cached(name) and not _hub_reachable():
        raise ValueError(_not_cached_message(name))
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise ValueError(f"--model-kwargs {kwargs} do not fit {name}: {err}") from err
    except OSError as err:
        if not pretrained:
            raise
        from huggingface_hub.errors import LocalEntryNotFoundError

        if isinstance(err, LocalEntryNotFoundError):
            raise ValueError(_not_cached_message(name)) from err
        raise ValueError(f"--pretrained: the weights of {name} could not be loaded: {err}") from err


def load_image(path: Path) -> Image.Image:
    """The image as RGB, or ``ValueError`` naming the path."""
    if not path.is_file():
        raise ValueError(f"IMAGE {str(path)!r} is not a file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise ValueError(f"IMAGE {str(path)!r} could not be read as an image: {err}") from err


def prepare(model: nn.Module, image: Image.Image) -> tuple[Tensor, np.ndarray]:
    """The model input ``(1, 3, H, W)`` (timm eval transform) and the same crop as an ``(H, W, 3)`` picture."""
    config = timm.data.resolve_model_data_config(model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        config["input_size"] = (3, *img_size)
    x = timm.data.create_transform(**config, is_training=False)(image).unsqueeze(0)
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    picture = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return x, picture


def layout(model: nn.Module, x: Tensor) -> tuple[tuple[int, ...], int]:
    """The patch grid and the number of prefix tokens of a ViT-style model for input ``x``."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None:
        raise ValueError(f"{type(model).__name__} has no patch_embed: visattn lens needs a ViT-style model whose "
                         "tokens lie on a patch grid")
    dynamic = getattr(patch_embed, "dynamic_feat_size", None)
    grid = dynamic(tuple(x.shape[-2:])) if dynamic is not None else patch_embed.grid_size
    return tuple(int(g) for g in grid), int(getattr(model, "num_prefix_tokens", 0) or 0)


def _chosen_metrics(options: LensOptions) -> tuple[tuple[str, ...], bool]:
    if options.metrics is None:
        return METRICS, False
    unknown = [m for m in options.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"--metrics has unknown names {unknown}; choose from {METRICS}")
    return tuple(dict.fromkeys(options.metrics)), True


def run(options: LensOptions) -> LensOutput:
    """Capture, measure, draw and write the report; returns what was written."""
    chosen, explicit = _chosen_metrics(options)
    check_output_folder(options.out, "--out")
    image = load_image(Path(options.image))
    torch.manual_seed(options.seed)
    model = build_model(options)
    picture_input, picture = prepare(model, image)
    grid, prefix = layout(model, picture_input)
    need_hidden = "sinks" in chosen or "phases" in chosen
    need_grad = "grad_rollout" in chosen
    what = ("probs", "hidden") if need_hidden else ("probs",)
    with torch.set_grad_enabled(need_grad), capture(model, options.layers, what, detach=not need_grad) as rec:
        output = model(picture_input)
    layers = rec.layers
    probs = {layer: rec.get("probs", layer).tensor for layer in layers}
    tokens = prefix + math.prod(grid)
    for layer, p in probs.items():
        if p.shape[-1] != tokens:
            raise ValueError(f"layer {layer} attends over {p.shape[-1]} tokens, but the patch grid {grid} plus "
                             f"{prefix} prefix tokens gives {tokens}")
    measured = _Measurements(options, grid, prefix, layers, explicit)
    measured.attention(chosen, probs)
    if need_hidden:
        hidden = {layer: rec.get("hidden", layer).tensor.detach() for layer in layers}
        measured.hidden_states(chosen, hidden)
    if need_grad:
        measured.gradients(output, probs)
    return measured.write(model, picture, {layer: p.detach() for layer, p in probs.items()})


class _Measurements:
    """The numbers, maps and notes of one run, filled metric by metric."""

    def __init__(self, options: LensOptions, grid: tuple[int, ...], prefix: int, layers: tuple[int, ...],
                 explicit: bool) -> None:
        self.options, self.grid, self.prefix, self.layers, self.explicit = options, grid, prefix, layers, explicit
        self.per_layer: dict[str, dict[int, float]] = {}
        self.per_head: dict[str, dict[int, list[float]]] = {}
        self.summary: dict[str, str] = {}
        self.maps: dict[str, Tensor] = {}
        self.notes: list[str] = []
        self.similarity: tuple[Tensor, list[list[int]]] | None = None

    def skip(self, metric: str, reason: str) -> None:
        if self.explicit:
            raise ValueError(f"--metrics {metric}: {reason}")
        self.notes.append(f"{metric} skipped: {reason}.")

    def attention(self, chosen: Sequence[str], probs: dict[int, Tensor]) -> None:
        detached = {layer: p.detach() for layer, p in probs.items()}
        if "entropy" in chosen:
            self.per_layer[f"entropy over grid keys (max ln {math.prod(self.grid)} = "
                           f"{math.log(math.prod(self.grid)):.3g})"] = {
                layer: float(metrics.attention_entropy(p, keys=slice(self.prefix, None)).mean())
                for layer, p in detached.items()}
        if "distance" in chosen:
            name = "mean attention distance (patches)"
            per_head = {layer: metrics.mean_attention_distance(p, self.grid, self.prefix).mean(dim=0)
                        for layer, p in detached.items()}
            self.per_layer[name] = {layer: float(d.mean()) for layer, d in per_head.items()}
            self.per_head[name] = {layer: d.tolist() for layer, d in per_head.items()}
        if "rollout" in chosen:
            stacked = [detached[layer] for layer in self.layers]
            self.maps["attention rollout"] = self._query_map(metrics.attention_rollout(stacked))

    def hidden_states(self, chosen: Sequence[str], hidden: dict[int, Tensor]) -> None:
        if "sinks" in chosen:
            tau = self.options.sink_tau
            everything = torch.cat([h.reshape(-1, h.shape[-1]) for h in hidden.values()])
            channels = everything.shape[-1]
            self.per_layer["max |x|/RMS"] = {
                layer: float(metrics.rms_ratio(h).amax()) for layer, h in hidden.items()}
            dims = metrics.massive_activation_dims(everything, threshold=tau)
            if dims.numel():
                self.summary["massive-activation dims"] = ", ".join(map(str, dims.tolist()))
                self.per_layer[f"sink tokens (phi > {tau:g})"] = {
                    layer: float(metrics.sink_tokens(h, dims, tau).sum(dim=-1).float().mean())
                    for layer, h in hidden.items()}
            else:
                self.summary["massive-activation dims"] = (f"none: no |x|/RMS above tau = {tau:g} (it is at most "
                                                           f"sqrt(C) = {math.sqrt(channels):.3g} for C = {channels})")
        if "phases" in chosen:
            if len(self.layers) < 2:
                self.skip("phases", "layer dissimilarity needs at least 2 captured layers")
                return
            weights = metrics.layer_dissimilarity([hidden[layer] for layer in self.layers], self.prefix)
            found = metrics.max_cut_phases(weights, eps=self.options.phase_eps)
            phases = [[self.layers[i] for i in phase] for phase in found]
            self.similarity = (weights, found)
            self.summary[f"phases (max-cut, eps = {self.options.phase_eps:g})"] = " | ".join(
                ", ".join(map(str, phase)) for phase in phases)

    def gradients(self, output: Any, probs: dict[int, Tensor]) -> None:
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[-1] < 1:
            self.skip("grad_rollout", "it needs a classifier output (batch, classes) to differentiate")
            return
        top = int(output[0].argmax())
        inputs = [probs[layer] for layer in self.layers]
        grads = torch.autograd.grad(output[0, top], inputs, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads, strict=True)]
        relevance = metrics.gradient_rollout([p.detach() for p in inputs], grads)
        self.maps[f"gradient rollout (class {top})"] = self._query_map(relevance)

    def _query_map(self, relevance: Tensor) -> Tensor:
        rows = relevance[0].unsqueeze(0).unsqueeze(0)
        return plots.query_maps(rows, self.grid, self.prefix, self.options.query)[0, 0]

    def write(self, model: nn.Module, picture: np.ndarray, probs: dict[int, Tensor]) -> LensOutput:
        out = Path(self.options.out)
        out.mkdir(parents=True, exist_ok=True)
        last = self.layers[-1]
        heads = {layer: plots.query_maps(p, self.grid, self.prefix, self.options.query)[0]
                 for layer, p in probs.items()}
        query = ("class token" if self.prefix else "mean over queries") if self.options.query is None \
            else f"query {self.options.query}"
        figures = {
            "attention.png": (plots.overlay_figure(picture, {**self.maps, f"layer {last}, head mean":
                                                              heads[last].mean(dim=0)}),
                              "Attention over the input", f"Rollouts and the last captured layer's attention of the "
                                                          f"{query}, upsampled from the {self.grid} patch grid."),
            "heads.png": (plots.head_grid_figure(heads, picture), "Layers x heads",
                          f"Attention of the {query} per layer and head, each map scaled to its own range."),
        }
        if self.per_layer:
            figures["metrics.png"] = (plots.metrics_figure(self.per_layer, self.per_head), "Metrics by layer",
                                      "Per-layer values (line) and per-head values (dots) where measured per head.")
        if self.similarity is not None:
            weights, found = self.similarity
            figures["similarity.png"] = (plots.similarity_figure(weights, self.layers, found), "Layer dissimilarity",
                                         "W[l, m] = mean(1 - cos) of the class token and the mean patch token "
                                         "entering each layer; boxes outline contiguous phases.")
        report = Report(
            title=f"visattn lens: {self.options.model} on {Path(self.options.image).name}",
            info={"model": self.options.model if not self.options.model_name
                  else f"{self.options.model_name} from {self.options.model}",
                  "weights": "pretrained" if self.options.pretrained else
                  ("checkpoint" if self.options.model_name else f"random (seed {self.options.seed})"),
                  "architecture": type(model).__name__, "image": str(self.options.image),
                  "grid": " x ".join(map(str, self.grid)), "prefix tokens": str(self.prefix),
                  "layers": ", ".join(map(str, self.layers)), "query": query},
            per_layer=self.per_layer, summary=self.summary, notes=self.notes)
        written = []
        for name, (fig, title, caption) in figures.items():
            png = plots.png_bytes(fig)
            (out / name).write_bytes(png)
            written.append(out / name)
            report.pictures.append(Picture(title, png, caption))
        json_path = out / "metrics.json"
        json_path.write_text(json.dumps({"info": report.info, "per_layer": self.per_layer, "summary": self.summary,
                                         "notes": self.notes}, indent=2), encoding="utf-8")
        return LensOutput(report.write(out / "report.html"), json_path, written, self.per_layer, self.summary)


def options_from(args: argparse.Namespace) -> LensOptions:
    """The options of a parsed ``visattn lens`` command line."""
    layers = None if args.layers is None else tuple(i for group in args.layers for i in group)
    return LensOptions(image=args.image, model=args.model, model_name=args.model_name, model_kwargs=args.model_kwargs,
                       pretrained=args.pretrained, layers=layers,
                       metrics=None if args.metrics is None else tuple(args.metrics), out=args.out, query=args.query,
                       sink_tau=SINK_TAU if args.sink_tau is None else args.sink_tau, phase_eps=args.phase_eps,
                       seed=args.seed)


def execute(args: argparse.Namespace, out: Console) -> int:
    """Run ``visattn lens`` from parsed arguments: a table of the metrics by layer, then the files written."""
    result = run(options_from(args))
    if result.per_layer:
        table = Table(title="visattn lens: metrics by layer")
        table.add_column("layer", justify="right")
        for name in result.per_layer:
            table.add_column(name, justify="right", overflow="fold")
        for layer in sorted({layer for values in result.per_layer.values() for layer in values}):
            table.add_row(str(layer), *(format_value(values.get(layer)) for values in result.per_layer.values()))
        out.print(table)
    for name, value in result.summary.items():
        out.print(f"{name}: {value}", highlight=False)
    for path in (*result.pictures, result.json, result.report):
        out.print(f"wrote {path}", highlight=False)
    return 0
