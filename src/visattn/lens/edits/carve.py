"""CARVE: contrast task attention against general attention, keep the salient regions, ask again.

Ge et al., "Focusing by Contrastive Attention: Enhancing VLMs' Visual Reasoning", arXiv 2509.06461
(code: YuyaoGe/CARVE). With ``A^task_{s,l}`` / ``A^gen_{s,l}`` the attention of the generated token at step ``s``,
layer ``l`` (heads averaged) over the image tokens, for the task question and for a general instruction
("Write a general description of the image."):

    S = sum_s w_s sum_{l in L} A^task_{s,l} / (A^gen_{s,l} + 1e-8),   w_s = s + 1,   L = 20..25

(``step_weights="first"`` uses step 0 only). The map is upsampled to the image, thresholded at its top 20%, split
into 4-connected regions of which the ``max(3, 20% of them)`` with the largest summed saliency are kept
(:func:`salient_regions`); the image is masked, cropped to the kept regions and resized to cover the original size
(:func:`refine_image`); the model is then asked again with ``[original, refined]``.

The maps come from :class:`VisualAttentionRecorder` (put it in ``visattn.lens.STATE.recorders`` or use
``visattn.lens.capture``). Upsampling is bilinear and the crop is resized with antialiased bicubic
interpolation (the code uses PIL's bilinear and Lanczos).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..call import AttentionCall
from ._common import image_positions, number

CARVE_LAYERS = tuple(range(20, 26))
"""The layers the paper contrasts (of 28-32-layer VLMs)."""


class VisualAttentionRecorder:
    """A lens recorder keeping, per call, the last query row's head-averaged attention to the image tokens.

    ``maps()`` stacks them to ``(steps, layers, B, n_img)``: step ``s`` of layer ``l`` is the ``s``-th call of
    that layer (one per generated token).
    """

    def __init__(self) -> None:
        self.calls: dict[int, list[Tensor]] = {}

    def __call__(self, call: AttentionCall, tensors: dict[str, Tensor]) -> None:
        image = image_positions(call, "VisualAttentionRecorder")
        row = tensors["probs"][:, :, -1, :].mean(dim=1)
        self.calls.setdefault(call.layer, []).append(row[:, image].detach())

    def maps(self) -> Tensor:
        if not self.calls:
            raise ValueError("VisualAttentionRecorder recorded nothing: no attention call went through the lens")
        layers = sorted(self.calls)
        if layers != list(range(len(layers))):
            raise ValueError(f"VisualAttentionRecorder needs every layer from 0 to build (steps, layers, ...) maps, "
                             f"got layers {layers}")
        steps = min(len(self.calls[layer]) for layer in layers)
        return torch.stack([torch.stack([self.calls[layer][s] for layer in layers]) for s in range(steps)])


def contrastive_attention(task: Tensor, general: Tensor, layers: Sequence[int] = CARVE_LAYERS,
                          step_weights: str = "linear", eps: float = 1e-8) -> Tensor:
    """``S = sum_s w_s sum_{l in layers} task[s, l] / (general[s, l] + eps)`` over the common steps.

    Args:
        task, general: ``(steps, layers, ..., n_img)`` attention maps (e.g. :meth:`VisualAttentionRecorder.maps`).
        layers: layers contrasted; layers a map does not have are skipped, as in the code.
        step_weights: ``"linear"`` (``w_s = s + 1``) or ``"first"`` (step 0 only, ``w = 1``).
        eps: the ``lambda`` of the paper's denominator.

    Returns:
        ``(..., n_img)`` saliency.
    """
    for name, value in (("task", task), ("general", general)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() < 3:
            raise TypeError(f"{name} must be a float tensor (steps, layers, ..., n_img), got "
                            f"{getattr(value, 'shape', type(value).__name__)}")
    if task.shape[2:] != general.shape[2:]:
        raise ValueError(f"task {tuple(task.shape)} and general {tuple(general.shape)} must agree after "
                         "(steps, layers)")
    if step_weights not in ("linear", "first"):
        raise ValueError(f"step_weights must be 'linear' or 'first', got {step_weights!r}")
    number(eps, "eps", 0.0)
    steps = 1 if step_weights == "first" else min(task.shape[0], general.shape[0])
    depth = min(task.shape[1], general.shape[1])
    chosen = [layer for layer in layers if 0 <= layer < depth]
    if not chosen:
        raise ValueError(f"none of layers {list(layers)} exists in maps with {depth} layers")
    ratio = task[:steps, chosen] / (general[:steps, chosen] + eps)
    weights = torch.arange(1, steps + 1, dtype=ratio.dtype, device=ratio.device)
    return (ratio.sum(1) * weights.view(-1, *([1] * (ratio.dim() - 2)))).sum(0)


def upsample_map(saliency: Tensor, grid: Sequence[int], size: Sequence[int]) -> Tensor:
    """A saliency vector over a ``grid = (h, w)`` of image tokens, bilinearly resized to ``size = (H, W)``."""
    h, w = grid
    if saliency.shape[-1] != h * w:
        raise ValueError(f"saliency has {saliency.shape[-1]} entries, grid {tuple(grid)} needs {h * w}")
    image = saliency.reshape(1, 1, h, w).double()
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].to(saliency.dtype)


def connected_regions(mask: Tensor) -> Tensor:
    """4-connected component labels of a 2-d bool mask: 0 outside, 1..K inside (in order of first pixel)."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise TypeError(f"mask must be a 2-d bool tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    h, w = mask.shape
    big = h * w + 1
    labels = torch.where(mask, torch.arange(h * w, device=mask.device).view(h, w), big)
    while True:
        padded = F.pad(labels, (1, 1, 1, 1), value=big)
        neighbours = torch.stack([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2],
                                  padded[1:-1, 2:]]).amin(0)
        updated = torch.where(mask, neighbours, big)
        if torch.equal(updated, labels):
            break
        labels = updated
    roots = torch.unique(labels[mask])
    out = torch.zeros(h, w, dtype=torch.long, device=mask.device)
    out[mask] = torch.searchsorted(roots, labels[mask]) + 1
    return out


def salient_regions(saliency: Tensor, top_fraction: float = 0.2, min_regions: int = 3,
                    strategy: str = "attention_sum", small_fraction: float = 0.001) -> Tensor:
    """CARVE's mask: top ``top_fraction`` of a 2-d map, then the best connected regions; bool, same shape.

    ``strategy``: ``"attention_sum"`` or ``"size"`` keep the ``max(min_regions, int(K * top_fraction))`` regions
    with the largest summed saliency or area; ``"remove_small"`` drops regions smaller than ``small_fraction`` of
    the thresholded area.
    """
    if not isinstance(saliency, Tensor) or saliency.dim() != 2 or not saliency.is_floating_point():
        raise TypeError(f"saliency must be a 2-d float map, got {getattr(saliency, 'shape', type(saliency))}")
    number(top_fraction, "top_fraction", 0.0, 1.0, low_open=True)
    if isinstance(min_regions, bool) or not isinstance(min_regions, int) or min_regions < 1:
        raise ValueError(f"min_regions must be a positive int, got {min_regions!r}")
    if strategy not in ("attention_sum", "size", "remove_small"):
        raise ValueError(f"strategy must be 'attention_sum', 'size' or 'remove_small', got {strategy!r}")
    threshold = torch.quantile(saliency.double().flatten(), 1.0 - top_fraction)
    mask = saliency.double() >= threshold
    labels = connected_regions(mask)
    count = int(labels.max())
    if count == 0:
        return mask
    flat = labels.flatten()
    size = torch.zeros(count + 1, dtype=torch.float64, device=saliency.device)
    size = size.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))[1:]
    if strategy == "remove_small":
        keep = size >= int(mask.sum() * small_fraction)
    else:
        score = size
        if strategy == "attention_sum":
            score = torch.zeros(count + 1, dtype=torch.float64, device=saliency.device)
            score = score.index_add_(0, flat, saliency.double().flatten())[1:]
        ranked = torch.argsort(score, descending=True, stable=True)
        keep = torch.zeros(count, dtype=torch.bool, device=saliency.device)
        keep[ranked[:max(min_regions, int(count * top_fraction))]] = True
    return torch.cat([torch.zeros(1, dtype=torch.bool, device=saliency.device), keep])[labels]


@dataclass
class RefinedImage:
    """CARVE's re-query input: the masked image, its crop resized to cover the original, and the crop box."""

    masked: Tensor
    refined: Tensor
    box: tuple[int, int, int, int]

    def query_images(self, original: Tensor) -> list[Tensor]:
        """The images of the second question, in the paper's order: ``[original, refined]``."""
        return [original, self.refined]


def refine_image(image: Tensor, mask: Tensor) -> RefinedImage:
    """Mask ``image`` (``(C, H, W)``) with ``mask`` (``(H, W)``), crop to the mask's box ``(x0, y0, x1, y1)``
    (the whole image when the mask is empty) and resize the crop by ``max(W / w, H / h)``."""
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise TypeError(f"image must be a (C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != image.shape[1:]:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(image.shape[1:])}, got "
                         f"{getattr(mask, 'shape', type(mask).__name__)}")
    height, width = mask.shape
    masked = image * mask.to(image.dtype)
    ys, xs = mask.nonzero(as_tuple=True)
    box = (0, 0, width, height) if ys.numel() == 0 else (int(xs.min()), int(ys.min()), int(xs.max()) + 1,
                                                            int(ys.max()) + 1)
    crop = masked[:, box[1]:box[3], box[0]:box[2]]
    scale = max(width / crop.shape[2], height / crop.shape[1])
    size = (int(crop.shape[1] * scale), int(crop.shape[2] * scale))
    resized = F.interpolate(crop.unsqueeze(0).double(), size=size, mode="bicubic", align_corners=False,
                            antialias=True)[0]
    if not image.is_floating_point():
        resized = resized.round().clamp(torch.iinfo(image.dtype).min, torch.iinfo(image.dtype).max)
    return RefinedImage(masked=masked, refined=resized.to(image.dtype), box=box)
