"""Pictures of captured attention: maps overlaid on the input image, per-layer x per-head grids, metrics by layer and
the layer dissimilarity matrix with its phases.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (so no global backend state and no
window; PNG through Agg); :func:`save_png` writes one and :func:`png_bytes` encodes one for the HTML report.
Attention maps are ``(*grid)`` tensors over the patch grid (e.g. from :func:`query_maps` or
:func:`visattn.lens.metrics.token_map`); they are upsampled bilinearly to the image size and drawn on a stated
scale with a colorbar in the maps' own units: ``scale="per_map"`` spans each map's own min..max (each panel has its
colorbar, so a map spanning 0.00498..0.00519 shows those numbers), ``scale="absolute"`` puts every map on one
shared range (``limits=(low, high)``, default ``min(0, smallest value)`` .. largest value) with one colorbar. The
scale is named on the figure.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from .._checks import as_shape, num_tokens

CMAP = "inferno"
SCALES = ("per_map", "absolute")
SCALE_NAMES = {"per_map": "scale: per map (each panel spans its own min..max)",
               "absolute": "scale: absolute (one range {low:.3g}..{high:.3g} for every panel)"}


def _image_array(image: np.ndarray | Tensor) -> np.ndarray:
    """``(H, W, 3)`` or ``(H, W)`` as float in [0, 1] (uint8 is divided by 255)."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def resize(heat: Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resized bilinearly to ``size = (H, W)``, values unchanged in kind (float64)."""
    heat = torch.as_tensor(np.asarray(heat.detach().cpu() if isinstance(heat, Tensor) else heat), dtype=torch.float64)
    if heat.dim() != 2:
        raise ValueError(f"heat must be a 2-D map over the patch grid, got shape {tuple(heat.shape)}")
    return F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def upsample(heat: Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resized bilinearly to ``size = (H, W)`` and scaled to [0, 1] by the map's own min and max (a
    constant map gives 0)."""
    big = resize(heat, size)
    source = np.asarray(heat.detach().cpu() if isinstance(heat, Tensor) else heat, dtype=np.float64)
    low, span = source.min(), source.max() - source.min()
    if span <= 0:
        return np.zeros_like(big)
    return np.clip((big - low) / span, 0.0, 1.0)


def scale_limits(maps: Sequence[Tensor | np.ndarray], scale: str,
                 limits: tuple[float, float] | None = None) -> list[tuple[float, float]]:
    """The colour range ``(low, high)`` of each map on ``scale`` (see the module docstring)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    arrays = [np.asarray(m.detach().cpu() if isinstance(m, Tensor) else m, dtype=np.float64) for m in maps]
    if limits is not None:
        if scale != "absolute":
            raise ValueError(f"limits={limits!r} needs scale='absolute', got scale={scale!r}")
        if len(limits) != 2 or not limits[0] < limits[1]:
            raise ValueError(f"limits must be (low, high) with low < high, got {limits!r}")
        return [(float(limits[0]), float(limits[1]))] * len(arrays)
    if scale == "per_map":
        return [(float(a.min()), float(a.max())) for a in arrays]
    low = min(0.0, min(float(a.min()) for a in arrays))
    return [(low, max(float(a.max()) for a in arrays))] * len(arrays)


def _draw(ax, fig: Figure, picture: np.ndarray | None, heat: Tensor | np.ndarray, limits: tuple[float, float],
          cmap: str, alpha: float, size: tuple[int, int], colorbar: bool):
    """One map on its colour range (over the picture when given); its colorbar when asked."""
    low, high = limits
    if picture is not None:
        ax.imshow(picture)
    image = ax.imshow(resize(heat, size), cmap=cmap, alpha=1.0 if picture is None else alpha, vmin=low,
                      vmax=high if high > low else low + 1e-12)
    if colorbar:
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        bar.formatter.set_useOffset(False)
        bar.update_ticks()
    return image


def query_maps(probs: Tensor, grid: Sequence[int], num_prefix_tokens: int = 0, query: int | None = None) -> Tensor:
    """Attention of one query over the grid keys: ``(B, heads, N, N) -> (B, heads, *grid)``.

    ``query=None`` takes the class token (row 0) when there are prefix tokens, else the mean over all query rows
    (the attention each grid token receives on average).
    """
    shape = as_shape(tuple(grid), "grid", max_dims=3)
    if probs.dim() != 4 or probs.shape[-1] != num_prefix_tokens + num_tokens(shape):
        raise ValueError(f"probs must be (B, heads, N, N) with N = num_prefix_tokens + prod(grid) = "
                         f"{num_prefix_tokens + num_tokens(shape)}, got shape {tuple(probs.shape)}")
    n = probs.shape[-2]
    if query is None:
        rows = probs[..., 0, :] if num_prefix_tokens > 0 else probs.mean(dim=-2)
    elif -n <= query < n:
        rows = probs[..., query, :]
    else:
        raise ValueError(f"query {query} out of range for {n} tokens")
    return rows[..., num_prefix_tokens:].reshape(*probs.shape[:2], *shape)


def overlay_figure(image: np.ndarray | Tensor, maps: Mapping[str, Tensor | np.ndarray], alpha: float = 0.55,
                   cmap: str = CMAP, scale: str = "per_map", limits: tuple[float, float] | None = None) -> Figure:
    """The image, then one panel per named 2-D map overlaid on it (upsampled to the image size), each with a
    colorbar in the map's units on ``scale`` (``"per_map"`` or ``"absolute"``, named on the figure)."""
    picture = _image_array(image)
    ranges = scale_limits(list(maps.values()), scale, limits)
    fig = Figure(figsize=(3.6 * (len(maps) + 1), 3.6), layout="constrained")
    axes = fig.subplots(1, len(maps) + 1, squeeze=False)[0]
    axes[0].imshow(picture)
    axes[0].set_title("input")
    for ax, (title, heat), limit in zip(axes[1:], maps.items(), ranges, strict=True):
        _draw(ax, fig, picture, heat, limit, cmap, alpha, picture.shape[:2], colorbar=scale == "per_map")
        ax.set_title(title, fontsize=9)
    if scale == "absolute" and maps:
        fig.colorbar(axes[1].images[-1], ax=list(axes[1:]), fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(_scale_name(scale, ranges), fontsize=8)
    return fig


def _scale_name(scale: str, ranges: Sequence[tuple[float, float]]) -> str:
    low, high = ranges[0] if ranges else (0.0, 0.0)
    return SCALE_NAMES[scale].format(low=low, high=high)


def head_grid_figure(maps: Mapping[int, Tensor], image: np.ndarray | Tensor | None = None, alpha: float = 0.6,
                     cmap: str = CMAP, scale: str = "per_map", limits: tuple[float, float] | None = None) -> Figure:
    """Rows = layers, columns = heads: each head's 2-D map ``(heads, gh, gw)`` per layer, over the image if given.

    ``scale="per_map"``: each cell spans its own min..max, and the colorbar reads in units of that (0 = a cell's
    min, 1 = its max); ``"absolute"``: one range for every cell and one colorbar in the maps' units. The scale is
    named on the figure.
    """
    if not maps:
        raise ValueError("maps must hold at least one layer")
    for layer, per_head in maps.items():
        if per_head.dim() != 3:
            raise ValueError(f"maps[{layer}] must be (heads, gh, gw), got shape {tuple(per_head.shape)}")
    heads = max(m.shape[0] for m in maps.values())
    picture = None if image is None else _image_array(image)
    cells = [per_head[h] for per_head in maps.values() for h in range(per_head.shape[0])]
    all_ranges = scale_limits(cells, scale, limits)
    ranges = iter(all_ranges)
    fig = Figure(figsize=(1.6 * heads + 1.2, 1.6 * len(maps) + 0.6), layout="constrained")
    axes = fig.subplots(len(maps), heads, squeeze=False)
    drawn = None
    for row, (layer, per_head) in enumerate(maps.items()):
        for head in range(heads):
            ax = axes[row, head]
            ax.set_xticks([])
            ax.set_yticks([])
            if head >= per_head.shape[0]:
                ax.set_axis_off()
                continue
            size = tuple(per_head.shape[1:]) if picture is None else picture.shape[:2]
            low, high = next(ranges)
            if scale == "per_map":
                heat, limit = upsample(per_head[head], size), (0.0, 1.0)
                drawn = _draw(ax, fig, picture, heat, limit, cmap, alpha, size, colorbar=False)
            else:
                drawn = _draw(ax, fig, picture, per_head[head], (low, high), cmap, alpha, size, colorbar=False)
            if row == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    label = "per-map min-max (0 = cell min, 1 = cell max)" if scale == "per_map" else "map value"
    fig.colorbar(drawn, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label=label)
    fig.suptitle(_scale_name(scale, all_ranges), fontsize=8)
    return fig


def metrics_figure(per_layer: Mapping[str, Mapping[int, float]],
                   per_head: Mapping[str, Mapping[int, Sequence[float]]] | None = None) -> Figure:
    """One panel per metric: its value by layer (line), with per-head values as dots where given."""
    if not per_layer:
        raise ValueError("per_layer must hold at least one metric")
    per_head = per_head or {}
    fig = Figure(figsize=(3.6 * len(per_layer), 3.0), layout="constrained")
    axes = fig.subplots(1, len(per_layer), squeeze=False)[0]
    for ax, (name, values) in zip(axes, per_layer.items(), strict=True):
        layers = sorted(values)
        for layer, heads in (per_head.get(name) or {}).items():
            ax.scatter([layer] * len(heads), heads, s=10, color="tab:gray", alpha=0.6)
        ax.plot(layers, [values[layer] for layer in layers], marker="o", color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    return fig


def similarity_figure(weights: Tensor, layers: Sequence[int], phases: Sequence[Sequence[int]] = (),
                      cmap: str = "viridis") -> Figure:
    """The layer dissimilarity matrix ``(L, L)`` (rows/columns labelled by ``layers``), with each phase of
    consecutive positions outlined."""
    matrix = weights.detach().cpu().double().numpy()
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(layers):
        raise ValueError(f"weights must be (L, L) with L = len(layers) = {len(layers)}, got shape {matrix.shape}")
    fig = Figure(figsize=(4.4, 3.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap=cmap)
    fig.colorbar(image, ax=ax, label="1 - cos")
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    for phase in phases:
        start, stop = min(phase), max(phase)
        if stop - start + 1 == len(phase):
            ax.add_patch(Rectangle((start - 0.5, start - 0.5), len(phase), len(phase), fill=False, color="white",
                                   linewidth=2))
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure encoded as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure to ``path`` as PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig, dpi))
    return path
