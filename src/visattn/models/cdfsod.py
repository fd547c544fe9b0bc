"""Centre-periphery attention refinement for cross-domain few-shot detection, attachable to a DETR detector.

Paper: "Remedying Target-Domain Astigmatism for Cross-Domain Few-Shot Object Detection", arXiv 2603.18541. On a
new domain a detector's attention disperses ("astigmatism": a larger mean attention distance, see
:func:`visattn.lens.metrics.mean_attention_distance`); the paper refocuses it, like the fovea and the periphery of
the eye, with three modules. The paper has no public code (searched 2026-12-05: GitHub code index, issues, paper
notes pages, which list "Code: None"), and neither our notes nor the stored copies of the paper that could be read
give the modules' equations, so the formulas below are OUR reading of the module names and descriptions, written
down so that they can be tested:

- class prototypes (support set): ``p_k = mean_{boxes b of class k} RoIAlign(F, b)``, ``F`` the detector's
  projected feature map ``(B, d, h, w)``; negative context ``n = mean of F over positions outside every box``.
- Textual Semantic Alignment (TSA), given class text embeddings ``t_k`` (any text encoder; tests use fixed random
  vectors): ``p~_k = p_k + W_t t_k`` and the alignment loss
  ``L_tsa = CE_k(cos(W_a p_k, t_j) / tau)`` (prototype ``k`` must pick its own class text among all ``j``).
- Positive Pattern Refinement (PPR), for every token ``x_i`` of ``F``:
  ``x'_i = x_i + gamma_p * sum_k softmax_k((W_q x_i) . (W_k p~_k) / sqrt(d)) W_v p~_k``.
- Negative Context Modulation (NCM), the periphery: ``s_i = cos(x_i, n) - max_k cos(x_i, p~_k)``,
  ``x''_i = x'_i * (1 - g * sigmoid(a * s_i + b))``: for ``g > 0`` tokens that look like the support's background
  are damped and tokens that look like a prototype are kept (``g`` is learned and unconstrained).

``gamma_p``, ``g`` and ``W_t`` start at zero, so attaching a fresh refiner to a pretrained detector leaves its
outputs unchanged (tested) and fine-tuning grows the refinement from there, as zero-initialised residual branches
are added to pretrained networks; the paper's initialisation is not known to us.

:func:`attach_cdfsod` hooks a :class:`CenterPeripheryRefiner` onto the output of the input projection of a Hugging
Face ``DetrForObjectDetection`` or ``ConditionalDetrForObjectDetection`` (the encoder's input), so the encoder's
self-attention, the decoder's cross-attention and the heads all see the refined features; the returned handle's
``remove()`` detaches it, and ``refiner.enabled = False`` leaves the detector's outputs unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CenterPeripheryRefiner",
    "NegativeContextModulation",
    "PositivePatternRefinement",
    "TextualSemanticAlignment",
    "attach_cdfsod",
    "class_prototypes",
    "detr_feature_map",
    "negative_context",
    "validate_boxes",
]


def validate_boxes(boxes: Tensor, image_size: Sequence[int], name: str = "boxes") -> Tensor:
    """Check ``(M, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels lie inside an ``(H, W)`` image and have positive area."""
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be a tensor (M, 4) of (x1, y1, x2, y2), got "
                         f"{getattr(boxes, 'shape', type(boxes).__name__)}")
    height, width = int(image_size[0]), int(image_size[1])
    if boxes.numel() and boxes.device.type != "meta":
        outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bool(outside.any()):
            bad = boxes[outside][0].tolist()
            raise ValueError(f"{name} must lie inside the {height}x{width} image, got box {bad}")
        if bool(empty.any()):
            raise ValueError(f"{name} must have x2 > x1 and y2 > y1, got box {boxes[empty][0].tolist()}")
    return boxes


def _support_checks(features: Tensor, boxes: Sequence[Tensor], image_size: Sequence[int]) -> None:
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise ValueError(f"features must be a tensor (B, d, h, w), got {getattr(features, 'shape', features)!r}")
    if len(boxes) != features.shape[0]:
        raise ValueError(f"boxes must hold one (M, 4) tensor per support image ({features.shape[0]}), got {len(boxes)}")
    for i, b in enumerate(boxes):
        validate_boxes(b, image_size, f"boxes[{i}]")
    if sum(int(b.shape[0]) for b in boxes) == 0:
        raise ValueError("the support set is empty: boxes hold no box, at least one is needed for prototypes")


def class_prototypes(features: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor], num_classes: int,
                     image_size: Sequence[int], output_size: int = 2) -> Tensor:
    """``p_k = mean over support boxes of class k of RoIAlign(F, box)`` (averaged over the RoI's cells), ``(K, d)``.

    Args:
        features: support feature maps ``(B, d, h, w)`` covering images of ``image_size``.
        boxes: per image ``(M_b, 4)`` boxes ``(x1, y1, x2, y2)`` in image pixels.
        labels: per image ``(M_b,)`` class indices in ``[0, num_classes)``.
        num_classes: ``K``; every class needs at least one support box.
        image_size: ``(H, W)`` of the support images (sets RoIAlign's spatial scale).
        output_size: RoIAlign's grid per box.
    """
    from torchvision.ops import roi_align

    _support_checks(features, boxes, image_size)
    if len(labels) != len(boxes):
        raise ValueError(f"labels must hold one tensor per support image ({len(boxes)}), got {len(labels)}")
    flat_labels = torch.cat([torch.as_tensor(lab, device=features.device).reshape(-1) for lab in labels])
    if flat_labels.numel() != sum(int(b.shape[0]) for b in boxes):
        raise ValueError("labels must hold one class index per support box")
    counts = torch.bincount(flat_labels.long(), minlength=num_classes) if flat_labels.numel() else None
    if counts is None or counts.shape[0] != num_classes or bool((counts == 0).any()):
        raise ValueError(f"every class in [0, {num_classes}) needs at least one support box, got box counts "
                         f"{None if counts is None else counts.tolist()}")
    scale = features.shape[-1] / float(image_size[1])
    pooled = roi_align(features, [b.to(features.dtype) for b in boxes], output_size, spatial_scale=scale,
                       sampling_ratio=2, aligned=True).mean(dim=(-2, -1))
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, flat_labels.long(), pooled)
    return sums / counts.to(features.dtype)[:, None]


def negative_context(features: Tensor, boxes: Sequence[Tensor], image_size: Sequence[int]) -> Tensor:
    """``n = mean of F over feature cells whose centre lies outside every support box``, shape ``(d,)``."""
    _support_checks(features, boxes, image_size)
    _, _, h, w = features.shape
    cy = (torch.arange(h, dtype=features.dtype, device=features.device) + 0.5) * (float(image_size[0]) / h)
    cx = (torch.arange(w, dtype=features.dtype, device=features.device) + 0.5) * (float(image_size[1]) / w)
    masks = []
    for b in boxes:
        b = b.to(features.dtype)
        inside_x = (cx[None, :] >= b[:, 0:1]) & (cx[None, :] <= b[:, 2:3])
        inside_y = (cy[None, :] >= b[:, 1:2]) & (cy[None, :] <= b[:, 3:4])
        inside = (inside_y[:, :, None] & inside_x[:, None, :]).any(dim=0)
        masks.append(~inside)
    outside = torch.stack(masks).to(features.dtype)[:, None]
    total = outside.sum()
    return (features * outside).sum(dim=(0, 2, 3)) / total.clamp_min(1.0)


class TextualSemanticAlignment(nn.Module):
    """TSA: ``p~_k = p_k + W_t t_k``; alignment loss ``CE_k(cos(W_a p_k, t_j) / tau)`` (arXiv 2603.18541)."""

    def __init__(self, dim: int, text_dim: int, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.inject = nn.Linear(text_dim, dim, bias=False)
        self.align = nn.Linear(dim, text_dim, bias=False)
        nn.init.zeros_(self.inject.weight)
        self.temperature = temperature

    def forward(self, prototypes: Tensor, text: Tensor) -> Tensor:
        """Text-informed prototypes ``(K, d)``."""
        _check_text(prototypes, text)
        return prototypes + self.inject(text)

    def loss(self, prototypes: Tensor, text: Tensor) -> Tensor:
        """``L_tsa``: cross-entropy of each prototype against all class texts by cosine similarity."""
        _check_text(prototypes, text)
        logits = F.normalize(self.align(prototypes), dim=-1) @ F.normalize(text, dim=-1).T / self.temperature
        return F.cross_entropy(logits, torch.arange(text.shape[0], device=text.device))


def _check_text(prototypes: Tensor, text: Tensor) -> None:
    if text.dim() != 2 or text.shape[0] != prototypes.shape[0]:
        raise ValueError(f"text must be (K, e) with K = {prototypes.shape[0]} prototypes, got {tuple(text.shape)}")


class PositivePatternRefinement(nn.Module):
    """PPR: ``x'_i = x_i + gamma_p sum_k softmax_k((W_q x_i).(W_k p_k)/sqrt(d)) W_v p_k`` (arXiv 2603.18541).

    ``gamma_p`` is learnable and starts at ``gamma`` (0: the identity until fine-tuning moves it).
    """

    def __init__(self, dim: int, gamma: float = 0.0) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))

    def forward(self, tokens: Tensor, prototypes: Tensor) -> Tensor:
        """``tokens (B, N, d)``, ``prototypes (K, d)`` -> ``(B, N, d)``."""
        scores = self.q(tokens) @ self.k(prototypes).T / math.sqrt(tokens.shape[-1])
        return tokens + self.gamma * (scores.softmax(dim=-1) @ self.v(prototypes))


class NegativeContextModulation(nn.Module):
    """NCM: ``x''_i = x'_i (1 - g sigmoid(a s_i + b))``, ``s_i = cos(x_i, n) - max_k cos(x_i, p_k)`` (arXiv
    2603.18541); ``a``, ``b`` and the strength ``g`` are learnable, ``g`` starts at ``strength`` (0: the identity).
    """

    def __init__(self, scale: float = 4.0, strength: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.strength = nn.Parameter(torch.tensor(float(strength)))

    def gate(self, tokens: Tensor, prototypes: Tensor, negative: Tensor) -> Tensor:
        """The damping ``g sigmoid(a s_i + b)`` per token, ``(B, N, 1)``."""
        unit = F.normalize(tokens, dim=-1)
        pos = (unit @ F.normalize(prototypes, dim=-1).T).amax(dim=-1, keepdim=True)
        neg = unit @ F.normalize(negative, dim=-1)[:, None]
        return self.strength * torch.sigmoid(self.scale * (neg - pos) + self.bias)

    def forward(self, refined: Tensor, tokens: Tensor, prototypes: Tensor, negative: Tensor) -> Tensor:
        """Damp ``refined`` (PPR's output) where the original ``tokens`` look like negative context."""
        return refined * (1 - self.gate(tokens, prototypes, negative))


class CenterPeripheryRefiner(nn.Module):
    """PPR + NCM (+ TSA when class text embeddings are given) on a feature map ``(B, d, h, w)``.

    Call :meth:`set_support` with the support set's feature map, boxes and labels (recompute it whenever the
    detector changes during fine-tuning); then ``refiner(feature_map)`` refines, and :func:`attach_cdfsod` calls it
    inside the detector. ``enabled = False`` (or no support) makes it the identity.
    """

    def __init__(self, dim: int, num_classes: int, text_embeddings: Tensor | None = None,
                 use_ppr: bool = True, use_ncm: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.dim, self.num_classes = dim, num_classes
        self.ppr = PositivePatternRefinement(dim) if use_ppr else None
        self.ncm = NegativeContextModulation() if use_ncm else None
        self.tsa: TextualSemanticAlignment | None = None
        if text_embeddings is not None:
            if text_embeddings.dim() != 2 or text_embeddings.shape[0] != num_classes:
                raise ValueError(f"text_embeddings must be (num_classes={num_classes}, e), got "
                                 f"{tuple(text_embeddings.shape)}")
            self.register_buffer("text", text_embeddings.detach().clone(), persistent=False)
            self.tsa = TextualSemanticAlignment(dim, text_embeddings.shape[1])
        self.enabled = True
        self.prototypes: Tensor | None = None
        self.raw_prototypes: Tensor | None = None
        self.negative: Tensor | None = None

    def set_support(self, features: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                    image_size: Sequence[int]) -> None:
        """Compute (with gradients) the class prototypes and the negative context from a support set."""
        if features.shape[1] != self.dim:
            raise ValueError(f"features must have {self.dim} channels, got {features.shape[1]}")
        raw = class_prototypes(features, boxes, labels, self.num_classes, image_size)
        self.raw_prototypes = raw
        self.prototypes = self.tsa(raw, self.text) if self.tsa is not None else raw
        self.negative = negative_context(features, boxes, image_size)

    def alignment_loss(self) -> Tensor:
        """TSA's ``L_tsa`` on the current prototypes (zero without text embeddings)."""
        if self.raw_prototypes is None:
            raise ValueError("call set_support before alignment_loss")
        if self.tsa is None:
            return self.raw_prototypes.sum() * 0
        return self.tsa.loss(self.raw_prototypes, self.text)

    def forward(self, feature_map: Tensor) -> Tensor:
        if not self.enabled or self.prototypes is None:
            return feature_map
        b, d, h, w = feature_map.shape
        tokens = feature_map.flatten(2).transpose(1, 2)
        refined = self.ppr(tokens, self.prototypes) if self.ppr is not None else tokens
        if self.ncm is not None:
            refined = self.ncm(refined, tokens, self.prototypes, self.negative)
        return refined.transpose(1, 2).reshape(b, d, h, w)


def _input_projection(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", model)
    projection = getattr(inner, "input_projection", None)
    if not isinstance(projection, nn.Conv2d):
        raise TypeError(f"model must be a transformers DetrForObjectDetection/ConditionalDetrForObjectDetection "
                        f"(with a model.input_projection Conv2d), got {type(model).__name__}")
    return projection


def detr_feature_map(model: nn.Module, pixel_values: Tensor) -> Tensor:
    """The DETR encoder's input before any refinement: ``input_projection(backbone(x)[-1])``, ``(B, d, h, w)``."""
    inner = getattr(model, "model", model)
    projection = _input_projection(model)
    mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], device=pixel_values.device)
    feature_map, _ = inner.backbone(pixel_values, mask)[-1]
    return F.conv2d(feature_map, projection.weight, projection.bias)


def attach_cdfsod(model: nn.Module, refiner: CenterPeripheryRefiner) -> torch.utils.hooks.RemovableHandle:
    """Run ``refiner`` on the output of the DETR's input projection; ``handle.remove()`` detaches it."""
    projection = _input_projection(model)
    if projection.out_channels != refiner.dim:
        raise ValueError(f"refiner.dim must equal the detector's d_model {projection.out_channels}, got {refiner.dim}")

    def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return refiner(output)

    return projection.register_forward_hook(hook)
