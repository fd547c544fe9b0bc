"""What ``visattn lens`` measures on models whose layers attend in windows, blocks, halos or neighborhoods, over
feature maps that shrink from stage to stage (Swin, MaxViT, DaViT, HaloNet, NAT, L2ViT, PATNet ...).

Each captured call carries a :class:`~visattn.lens.layout.TokenLayout`, which puts every window's queries and keys
back on the layer's feature map, so:

- ``entropy``: the mean entropy of the attention rows over their keys (nats), every layer (channel attention too);
- ``distance``: the mean attention distance in input pixels, ``(1 / Q) sum_q sum_k A[q, k] ||s (p_q - p_k)||``
  with ``s`` the input pixels per map token of the layer (:func:`~visattn.lens.layout.mean_distance`), so layers of
  different stages compare;
- maps: the attention each map position receives, averaged over the image's queries
  (:func:`~visattn.lens.layout.received_attention`), per head and layer, and over the input for the first and the
  last captured layer;
- ``sinks``: the largest ``|x| / RMS`` of each block's input; massive-activation dims and ``phases`` (layer
  dissimilarity and max-cut) where every captured layer has the same width (they compare channels across layers);
- ``rollout`` and ``grad_rollout`` do not apply: rollout multiplies the attention matrices of consecutive layers,
  which here act on different windows and token sets.

Layers that attend over channels (DaViT's channel attention) have no token layout: they get the entropy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from . import metrics
from .layout import TokenLayout, mean_distance, received_attention
from .measurements import GridMeasurements, LensOptions

ROLLOUT_REASON = ("it multiplies the attention of consecutive layers, and these layers attend over different windows "
                  "and token sets")


class MapMeasurements(GridMeasurements):
    """:class:`~visattn.lens.measurements.GridMeasurements` for layers with token layouts (see the module
    docstring); ``image_size`` is the input's ``(H, W)`` in pixels."""

    def __init__(self, options: LensOptions, layers: tuple[int, ...], explicit: bool,
                 layouts: dict[int, TokenLayout | None], image_size: tuple[int, int]) -> None:
        super().__init__(options, (), 0, layers, explicit)
        self.layouts = layouts
        self.image_size = image_size
        self.mapped = tuple(layer for layer in layers if layouts[layer] is not None)
        unmapped = [layer for layer in layers if layouts[layer] is None]
        if unmapped:
            self.notes.append(f"layers {', '.join(map(str, unmapped))} attend over channels (or tokens without a "
                              "map layout): entropy only, no distance or maps.")

    def pixels_per_token(self, layer: int) -> tuple[float, float]:
        grid = self.layouts[layer].grid
        return self.image_size[0] / grid[0], self.image_size[1] / grid[1]

    def attention(self, chosen: Sequence[str], probs: dict[int, Tensor]) -> None:
        detached = {layer: p.detach() for layer, p in probs.items()}
        if "entropy" in chosen:
            self.per_layer["entropy over keys (nats)"] = {
                layer: float(metrics.attention_entropy(p).mean()) for layer, p in detached.items()}
        if "distance" in chosen:
            if not self.mapped:
                self.skip("distance", "no captured layer has a token layout on a feature map")
            else:
                name = "mean attention distance (input pixels)"
                per_head = {layer: mean_distance(detached[layer], self.layouts[layer],
                                                 self.pixels_per_token(layer)).mean(dim=0) for layer in self.mapped}
                self.per_layer[name] = {layer: float(d.mean()) for layer, d in per_head.items()}
                self.per_head[name] = {layer: d.tolist() for layer, d in per_head.items()}
        for metric in ("rollout", "grad_rollout"):
            if metric in chosen:
                self.skip(metric, ROLLOUT_REASON)

    def gradients(self, output: Any, probs: dict[int, Tensor]) -> None:
        """Gradient rollout does not apply (:meth:`attention` has said so)."""

    def hidden_states(self, chosen: Sequence[str], hidden: dict[int, Tensor]) -> None:
        widths = {h.shape[-1] for h in hidden.values()}
        if len(widths) == 1:
            tokens = {h.shape[-2] for h in hidden.values()}
            if "phases" in chosen and len(tokens) > 1:
                self.skip("phases", f"layer dissimilarity compares the same tokens across layers, and the captured "
                                    f"layers hold {min(tokens)}..{max(tokens)} tokens (pruned or merged)")
                chosen = [metric for metric in chosen if metric != "phases"]
            super().hidden_states(chosen, hidden)
            return
        if "sinks" in chosen:
            self.per_layer["max |x|/RMS"] = {layer: float(metrics.rms_ratio(h).amax()) for layer, h in hidden.items()}
            self.summary["massive-activation dims"] = (f"not compared: the captured layers differ in width "
                                                       f"({min(widths)}..{max(widths)} channels)")
        if "phases" in chosen:
            self.skip("phases", f"layer dissimilarity compares hidden states of one width, and the captured layers "
                                f"have {min(widths)}..{max(widths)} channels")

    def head_maps(self, probs: dict[int, Tensor]) -> dict[int, Tensor]:
        """Per mapped layer ``(heads, H, W)``: the attention each position of its feature map receives."""
        return {layer: received_attention(probs[layer], self.layouts[layer])[0] for layer in self.mapped}

    def overlay_maps(self, heads: dict[int, Tensor]) -> dict[str, Tensor]:
        if not self.mapped:
            return {}
        ends = dict.fromkeys((self.mapped[0], self.mapped[-1]))
        return {f"layer {layer} ({' x '.join(map(str, self.layouts[layer].grid))}), head mean":
                heads[layer].mean(dim=0) for layer in ends}

    def overlay_caption(self) -> str:
        return ("The attention each position receives, averaged over the image's queries and the heads, for the "
                "first and the last captured layer, upsampled from their feature maps.")

    def heads_caption(self) -> str:
        return ("The attention each feature-map position receives per layer and head (averaged over queries), each "
                "map scaled to its own range.")

    def layout_info(self) -> dict[str, str]:
        grids = {layer: " x ".join(map(str, self.layouts[layer].grid)) for layer in self.mapped}
        windows = {layer: self.layouts[layer].windows for layer in self.mapped}
        return {"feature maps": ", ".join(f"{layer}: {grid} ({windows[layer]} window"
                                          f"{'s' if windows[layer] != 1 else ''})" for layer, grid in grids.items())
                or "none (channel attention only)",
                "input": f"{self.image_size[0]} x {self.image_size[1]} pixels"}
