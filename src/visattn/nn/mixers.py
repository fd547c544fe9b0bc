"""Registry entries of the structured mixers that run through :class:`MaskedMixer` (and plain softmax)."""

from __future__ import annotations

from collections.abc import Sequence

from .. import masks
from ..registry import register_mixer
from .masked import MaskedMixer
from .softmax import SoftmaxMixer


@register_mixer("softmax", paper="vit", complexity="O(N^2)", family="dense", faces=("definition", "module", "timm"))
def softmax(scale: float | None = None, attn_drop: float = 0.0) -> SoftmaxMixer:
    """Dense softmax attention, every query sees every key (ViT)."""
    return SoftmaxMixer(scale=scale, attn_drop=attn_drop)


@register_mixer("neighborhood", paper="faster_neighborhood", complexity="O(N k^d)", family="structured",
                faces=("definition", "fast", "module"))
def neighborhood(kernel_size: int | Sequence[int] = 7, stride: int | Sequence[int] = 1,
                 dilation: int | Sequence[int] = 1, is_causal: bool | Sequence[bool] = False, backend: str = "auto",
                 scale: float | None = None, attn_drop: float = 0.0) -> MaskedMixer:
    """Neighborhood attention in 1-3 dims: the k^d nearest keys, NATTEN semantics (stride, dilation, causal).

    Arguments in NATTEN's order: ``kernel_size, stride, dilation, is_causal``."""
    return MaskedMixer(masks.neighborhood_mask(kernel_size, stride, dilation, is_causal), backend, scale, attn_drop)


@register_mixer("window", paper="maxvit", complexity="O(N P^d)", family="structured",
                faces=("definition", "fast", "module", "timm"))
def window(window_size: int | Sequence[int] = 7, backend: str = "auto", scale: float | None = None,
           attn_drop: float = 0.0) -> MaskedMixer:
    """Block (window) attention: non-overlapping P x P windows (MaxViT block attention)."""
    return MaskedMixer(masks.window_mask(window_size), backend, scale, attn_drop)


@register_mixer("grid", paper="maxvit", complexity="O(N G^d)", family="structured",
                faces=("definition", "fast", "module", "timm"))
def grid(grid_size: int | Sequence[int] = 7, backend: str = "auto", scale: float | None = None,
         attn_drop: float = 0.0) -> MaskedMixer:
    """Grid (dilated) attention: a sparse G x G grid of tokens spaced H/G apart (MaxViT grid attention)."""
    return MaskedMixer(masks.grid_mask(grid_size), backend, scale, attn_drop)


@register_mixer("halo", paper="halonet", complexity="O(N (b+2h)^d)", family="structured",
                faces=("definition", "fast", "module", "timm"))
def halo(block_size: int | Sequence[int] = 8, halo_size: int | Sequence[int] = 3, backend: str = "auto",
         scale: float | None = None, attn_drop: float = 0.0) -> MaskedMixer:
    """Halo attention: b x b query blocks see the block widened by a halo of h tokens (HaloNet)."""
    return MaskedMixer(masks.halo_mask(block_size, halo_size), backend, scale, attn_drop)


@register_mixer("axial", paper="morph", complexity="O(N L)", family="structured",
                faces=("definition", "fast", "module"))
def axial(axis: int = -1, backend: str = "auto", scale: float | None = None, attn_drop: float = 0.0) -> MaskedMixer:
    """Axial attention along one axis of the grid: tokens on the same line (MORPH)."""
    return MaskedMixer(masks.axial_mask(axis), backend, scale, attn_drop)


@register_mixer("strip", paper="rst", complexity="O(N w L)", family="structured",
                faces=("definition", "fast", "module"))
def strip(orientation: str = "rows", width: int = 1, backend: str = "auto", scale: float | None = None,
          attn_drop: float = 0.0) -> MaskedMixer:
    """Strip attention: bands of rows or of columns on a 2-D grid (RST's strips, without the polar resampling)."""
    return MaskedMixer(masks.strip_mask(orientation, width), backend, scale, attn_drop)


@register_mixer("sliding", paper="longformer", complexity="O(N w)", family="structured",
                faces=("definition", "fast", "module"))
def sliding(window_size: int = 128, is_causal: bool = False, backend: str = "auto", scale: float | None = None,
            attn_drop: float = 0.0) -> MaskedMixer:
    """Sliding-window attention over the token sequence, centred or causal."""
    return MaskedMixer(masks.sliding_window_mask(window_size, is_causal), backend, scale, attn_drop)


@register_mixer("radial", paper="radial_attention", complexity="O(N log N)", family="structured",
                faces=("definition", "fast", "module"))
def radial(rule: str = "paper", block_size: int = 128, decay_factor: float = 1.0, backend: str = "auto",
           scale: float | None = None, attn_drop: float = 0.0, model_type: str = "hunyuan",
           decimation_threshold: int = 128, release: str = "2025-11") -> MaskedMixer:
    """Radial attention over (frames, *spatial): spatial band halving as frame distance doubles."""
    mask = masks.radial_mask(rule, block_size, decay_factor, model_type, decimation_threshold, release)
    return MaskedMixer(mask, backend, scale, attn_drop)
