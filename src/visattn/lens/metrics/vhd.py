"""Vision-aware Head Divergence (VHD) and its total over layers (T-VHD).

He et al., "Cracking the Code of Hallucination in LVLMs with Vision-aware Head Divergence", arXiv 2412.13949:
for head ``i`` of layer ``l`` at the current generation step,
``VHD_{l,i} = || A_{l,i}(image, text) - A_{l,i}(text only) ||_2``, with ``A_{l,i}`` the head's output before the
output projection; ``T-VHD = sum_l sum(top-k_i VHD_{l,i})``. Heads whose VHD *and* text-only output norm both
exceed ``mean + std`` over the heads of their layer are outliers and are left out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import tensor


def vision_head_divergence(with_image: Tensor, text_only: Tensor) -> Tensor:
    """``||A(with image) - A(text only)||_2`` per head.

    Args:
        with_image: per-head outputs ``(..., heads, head_dim)`` at the chosen query position(s) of the pass with
            the image (e.g. ``head_outputs[:, :, -1, :]`` of one layer, or ``(layers, B, heads, head_dim)``).
        text_only: the same positions of the pass without the image, same shape.

    Returns:
        ``(..., heads)``.
    """
    with_image = tensor(with_image, "with_image", min_dim=2)
    text_only = tensor(text_only, "text_only", min_dim=2)
    if with_image.shape != text_only.shape:
        raise ValueError(f"with_image {tuple(with_image.shape)} and text_only {tuple(text_only.shape)} must have the "
                         "same shape (..., heads, head_dim)")
    return torch.linalg.vector_norm(with_image - text_only, dim=-1)


def vhd_outliers(vhd: Tensor, text_only_norm: Tensor) -> Tensor:
    """Bool mask ``(..., heads)``: ``VHD > mean + std`` and ``||A(text only)|| > mean + std``, the means and
    (unbiased) standard deviations taken over the heads of each layer (the last dim)."""
    vhd = tensor(vhd, "vhd", min_dim=1)
    text_only_norm = tensor(text_only_norm, "text_only_norm", min_dim=1)
    if vhd.shape != text_only_norm.shape:
        raise ValueError(f"vhd {tuple(vhd.shape)} and text_only_norm {tuple(text_only_norm.shape)} must have the "
                         "same shape (..., heads)")
    if vhd.shape[-1] < 2:
        raise ValueError(f"outliers need at least 2 heads per layer, got shape {tuple(vhd.shape)}")

    def above(x: Tensor) -> Tensor:
        return x > x.mean(dim=-1, keepdim=True) + x.std(dim=-1, keepdim=True)

    return above(vhd) & above(text_only_norm)


def total_vhd(vhd: Tensor, k: int, text_only_norm: Tensor | None = None) -> Tensor:
    """``T-VHD = sum_l sum(top-k over heads of VHD_{l,.})``.

    Args:
        vhd: ``(..., layers, heads)``.
        k: heads kept per layer (``1 <= k <= heads``).
        text_only_norm: ``(..., layers, heads)`` norms of the text-only head outputs; when given, the outliers of
            :func:`vhd_outliers` count 0 (they are left out of the top-k).

    Returns:
        ``(...)``.
    """
    vhd = tensor(vhd, "vhd", min_dim=2)
    heads = vhd.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= heads:
        raise ValueError(f"k must be an int in [1, {heads}] (the number of heads), got {k!r}")
    if text_only_norm is not None:
        vhd = vhd.masked_fill(vhd_outliers(vhd, text_only_norm), 0.0)
    return vhd.topk(k, dim=-1).values.sum(dim=(-2, -1))
