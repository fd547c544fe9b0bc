"""What ``visattn lens`` measures on a ViT-style model, and the report it writes (:class:`GridMeasurements`);
:mod:`visattn.lens.map_measurements` extends it to models that attend in windows, blocks or neighborhoods."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import metrics, plots
from .metrics import SINK_TAU
from .report import Picture, Report


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


class GridMeasurements:
    """The numbers, maps and notes of one run on a ViT-style model (every layer attends over the prefix tokens and
    one patch grid), filled metric by metric."""

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

    def query_text(self) -> str:
        if self.options.query is not None:
            return f"query {self.options.query}"
        return "class token" if self.prefix else "mean over queries"

    def head_maps(self, probs: dict[int, Tensor]) -> dict[int, Tensor]:
        """Per layer ``(heads, gh, gw)``: the attention of the chosen query over the patch grid."""
        return {layer: plots.query_maps(p, self.grid, self.prefix, self.options.query)[0] for layer, p in probs.items()}

    def overlay_maps(self, heads: dict[int, Tensor]) -> dict[str, Tensor]:
        last = self.layers[-1]
        return {**self.maps, f"layer {last}, head mean": heads[last].mean(dim=0)}

    def overlay_caption(self) -> str:
        return (f"Rollouts and the last captured layer's attention of the {self.query_text()}, upsampled from the "
                f"{self.grid} patch grid.")

    def heads_caption(self) -> str:
        return f"Attention of the {self.query_text()} per layer and head, each map scaled to its own range."

    def layout_info(self) -> dict[str, str]:
        return {"grid": " x ".join(map(str, self.grid)), "prefix tokens": str(self.prefix), "query": self.query_text()}

    def write(self, model: nn.Module, picture: np.ndarray, probs: dict[int, Tensor]) -> LensOutput:
        out = Path(self.options.out)
        out.mkdir(parents=True, exist_ok=True)
        heads = self.head_maps(probs)
        figures = {}
        overlays = self.overlay_maps(heads)
        if overlays:
            figures["attention.png"] = (plots.overlay_figure(picture, overlays), "Attention over the input",
                                        self.overlay_caption())
        if heads:
            figures["heads.png"] = (plots.head_grid_figure(heads, picture), "Layers x heads", self.heads_caption())
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
                  **self.layout_info(), "layers": ", ".join(map(str, self.layers))},
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
