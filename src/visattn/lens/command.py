"""``visattn lens IMAGE --model NAME_OR_CHECKPOINT``: capture a ViT's attention on one image, measure it, draw it.

The model is a timm model name (visattn models are registered in timm) built with random weights unless
``--pretrained`` is given (a warning says so), or a checkpoint file saved with ``torch.save(model.state_dict())``
together with ``--model-name`` (and the ``--model-kwargs`` it was built with). The image is resized and cropped as
the model's timm data config says. The run writes into ``--out``: ``attention.png`` (rollout, gradient rollout and
the last layer's attention over the image), ``heads.png`` (layers x heads), ``metrics.png`` (metrics by layer),
``similarity.png`` (layer dissimilarity and phases), ``metrics.json`` and ``report.html`` (everything, one file).

Metrics (``--metrics``, default all that apply): ``entropy`` (mean over heads and queries of the entropy over the
grid keys, CARVE), ``distance`` (mean attention distance in patches), ``sinks`` (largest ``|x|/RMS`` per layer,
massive-activation dims and sink tokens, VAR), ``rollout``, ``grad_rollout`` (gradient rollout of the top class),
``phases`` (layer dissimilarity and max-cut phases, Raptor). Rollouts run over the captured layers only.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import math
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

from . import metrics, plots
from .capture import capture
from .metrics import SINK_TAU
from .report import Picture, Report, format_value

logger = logging.getLogger("visattn.lens")

METRICS = ("entropy", "distance", "sinks", "rollout", "grad_rollout", "phases")


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


def parse_model_kwargs(text: str) -> dict[str, Any]:
    """``"img_size=32,depth=2"`` -> ``{"img_size": 32, "depth": 2}``; values are Python literals or bare words."""
    if not text.strip():
        return {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"--model-kwargs must look like key=value,key=value, got {text!r}") from err
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise ValueError(f"--model-kwargs must look like key=value,key=value, got {text!r}")
    kwargs = {}
    for keyword in call.keywords:
        node = keyword.value
        if isinstance(node, ast.Name):
            kwargs[keyword.arg] = node.id
            continue
        try:
            kwargs[keyword.arg] = ast.literal_eval(node)
        except ValueError as err:
            raise ValueError(f"--model-kwargs value of {keyword.arg} must be a Python literal, "
                             f"got {ast.unparse(node)!r}") from err
    return kwargs


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
        state = torch.load(source, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint {options.model!r} must hold a state_dict (saved with "
                             f"torch.save(model.state_dict(), path)), got {type(state).__name__}")
        model.load_state_dict(state)
        return model.eval()
    if options.model_name:
        raise ValueError(f"--model-name is only for checkpoint files, and --model {options.model!r} is not a file")
    model = _create(options.model, options.pretrained, options.model_kwargs)
    if not options.pretrained:
        logger.warning("%s has random weights (seed %d): pass --pretrained to load timm's weights or a checkpoint "
                       "file; attention maps of an untrained model show no learnt structure", options.model,
                       options.seed)
    return model.eval()


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f"--model {name!r} is neither a checkpoint file nor a timm model name "
                         f"(see timm.list_models(), e.g. 'vit_tiny_patch16_224')")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise ValueError(f"--model-kwargs {kwargs} do not fit {name}: {err}") from err


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


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--layers must be integers, got {text!r}") from err


def _model_kwargs(text: str) -> dict[str, Any]:
    try:
        return parse_model_kwargs(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``lens`` subcommand to the ``visattn`` parser."""
    lens = commands.add_parser("lens", help="capture, measure and draw a ViT's attention on one image",
                               description=__doc__.split("\n\n")[0])
    lens.add_argument("image", type=Path, help="the input picture (PNG, JPEG, ...)")
    lens.add_argument("--model", required=True, help="timm model name, or a checkpoint file (with --model-name)")
    lens.add_argument("--model-name", default=None, help="timm name of the architecture a checkpoint was saved from")
    lens.add_argument("--model-kwargs", type=_model_kwargs, default={},
                      help="keyword arguments for timm.create_model, e.g. img_size=32,depth=2")
    lens.add_argument("--pretrained", action="store_true", help="load timm's pretrained weights for a model name")
    lens.add_argument("--layers", nargs="+", type=_layers, default=None, metavar="LAYER",
                      help="attention layers to capture (default: all)")
    lens.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                      help=f"metrics to compute, from {', '.join(METRICS)} (default: all that apply)")
    lens.add_argument("--out", type=Path, default=Path("visattn-lens"), help="output folder (default: visattn-lens)")
    lens.add_argument("--query", type=int, default=None,
                      help="token whose attention is drawn (default: the class token, or the mean over queries)")
    lens.add_argument("--sink-tau", type=float, default=SINK_TAU, help="VAR's sink threshold tau")
    lens.add_argument("--phase-eps", type=float, default=0.1, help="max-cut phases stop at cut <= eps * total")
    lens.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def options_from(args: argparse.Namespace) -> LensOptions:
    """The options of a parsed ``visattn lens`` command line."""
    layers = None if args.layers is None else tuple(i for group in args.layers for i in group)
    return LensOptions(image=args.image, model=args.model, model_name=args.model_name, model_kwargs=args.model_kwargs,
                       pretrained=args.pretrained, layers=layers,
                       metrics=None if args.metrics is None else tuple(args.metrics), out=args.out, query=args.query,
                       sink_tau=args.sink_tau, phase_eps=args.phase_eps, seed=args.seed)


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
