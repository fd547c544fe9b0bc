"""Few-shot cross-domain detection: generated shapes in a source and a shifted target domain, a tiny DETR, mAP,
few-shot fine-tuning with the centre-periphery refiner and the attention-distance analysis.

Paper: "Remedying Target-Domain Astigmatism for Cross-Domain Few-Shot Object Detection", arXiv 2603.18541
(modules: :mod:`visattn.models.cdfsod`).

- :func:`shapes_scenes`: seeded scenes of 1-2 shapes (square, disk, triangle; class counts balanced over a batch)
  in a ``"source"`` domain (flat dark background, bright shapes) or a ``"target"`` one (brighter striped texture
  and noise, three bright distractor bars of no class, hue-shifted shapes). Boxes are ``(x1, y1, x2, y2)`` in
  pixels.
- :func:`to_detr_labels`: boxes to DETR's normalised ``(cx, cy, w, h)`` via ``torchvision.ops.box_convert``.
- :func:`mean_average_precision`: COCO mAP@[.5:.95] and mAP@.5 from pycocotools (imported lazily).
- :func:`finetune_detector`: AdamW on DETR's Hungarian loss (+ TSA's alignment loss when the refiner has text),
  prototypes recomputed from the support set at every step.
- :func:`attention_distances`: per-layer mean attention distance of the encoder self-attention, recorded with
  :func:`visattn.lens.capture.capture` and measured with :func:`visattn.lens.metrics.mean_attention_distance`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..models.cdfsod import CenterPeripheryRefiner, detr_feature_map, validate_boxes

__all__ = [
    "CLASSES",
    "attention_distances",
    "finetune_detector",
    "mean_average_precision",
    "predict",
    "shapes_scenes",
    "tiny_detr",
    "to_detr_labels",
    "trainable_backbone",
]

logger = logging.getLogger(__name__)

CLASSES = ("square", "disk", "triangle")


def _shape_mask(kind: int, yy: Tensor, xx: Tensor, cy: float, cx: float, r: float) -> Tensor:
    if kind == 0:
        return ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    top = cy - r
    rel = (yy - top) / (2 * r)
    return (rel >= 0) & (rel <= 1) & ((xx - cx).abs() <= rel * r)


def _clutter(image: Tensor, yy: Tensor, xx: Tensor, g: torch.Generator, bars: int = 3) -> Tensor:
    """Paint ``bars`` bright thin bars (2 px wide, random length, angle and colour): distractors of no class."""
    size = image.shape[-1]
    for _ in range(bars):
        cy, cx, angle, length, *colour = torch.rand(7, generator=g).tolist()
        cy, cx, angle, length = cy * size, cx * size, angle * math.pi, size * (0.2 + 0.2 * length)
        along = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        across = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        bar = (along.abs() <= length / 2) & (across.abs() <= 1.0)
        image = torch.where(bar, (0.65 + 0.35 * torch.tensor(colour))[:, None, None], image)
    return image


def shapes_scenes(count: int, domain: str = "source", size: int = 64, generator: torch.Generator | None = None,
                  max_objects: int = 2) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``count`` images ``(count, 3, size, size)`` in ``[0, 1]`` with per-image boxes ``(M, 4)`` and labels ``(M,)``.

    Class labels are drawn from a seeded balanced cycle, so over ``count * objects`` shapes every class occurs
    ``floor`` or ``ceil`` of its share.
    """
    if domain not in ("source", "target"):
        raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    numbers = (torch.randint(1, max_objects + 1, (count,), generator=g)).tolist()
    total = sum(numbers)
    cycle = torch.arange(total) % len(CLASSES)
    kinds = cycle[torch.randperm(total, generator=g)].tolist()
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    images, boxes, labels = [], [], []
    used = 0
    for n in numbers:
        u = torch.rand(8, generator=g)
        if domain == "source":
            image = (0.2 + 0.1 * u[:3])[:, None, None] + 0.03 * torch.randn(3, size, size, generator=g)
        else:
            freq = 2 * math.pi * (3 + 5 * float(u[3])) / size
            angle = float(u[4]) * math.pi
            stripes = torch.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)))
            image = (0.35 + 0.15 * u[:3])[:, None, None] + 0.1 * stripes + 0.06 * torch.randn(3, size, size,
                                                                                             generator=g)
            image = _clutter(image, yy, xx, g)
        img_boxes, img_labels = [], []
        for _ in range(n):
            kind = kinds[used]
            used += 1
            r = size * (0.1 + 0.08 * float(torch.rand((), generator=g)))
            cy, cx = (r + (size - 2 * r) * torch.rand(2, generator=g)).tolist()
            mask = _shape_mask(kind, yy, xx, cy, cx, r)
            colour = torch.rand(3, generator=g)
            colour = 0.6 + 0.4 * colour if domain == "source" else 0.65 + 0.35 * colour.flip(0)
            image = torch.where(mask, colour[:, None, None], image)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            img_boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
            img_labels.append(kind)
        images.append(image.clamp(0, 1))
        boxes.append(torch.stack(img_boxes))
        labels.append(torch.tensor(img_labels))
    return torch.stack(images), boxes, labels


def to_detr_labels(boxes: Sequence[Tensor], labels: Sequence[Tensor], image_size: Sequence[int]) -> list[dict]:
    """Pixel ``(x1, y1, x2, y2)`` boxes to DETR targets: ``class_labels`` and normalised ``(cx, cy, w, h)``."""
    from torchvision.ops import box_convert

    height, width = int(image_size[0]), int(image_size[1])
    out = []
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        validate_boxes(b, (height, width), f"boxes[{i}]")
        scale = b.new_tensor([width, height, width, height])
        out.append({"class_labels": lab.long(), "boxes": box_convert(b / scale, "xyxy", "cxcywh")})
    return out


def tiny_detr(num_classes: int = len(CLASSES), d_model: int = 32, layers: int = 2, heads: int = 2,
              queries: int = 8, stride: int = 16, kind: str = "detr", auxiliary_loss: bool = False) -> nn.Module:
    """A randomly initialised small DETR-family detector (ResNet of stride 8 or 16, eager attention): no download.

    ``kind="detr"``: ``DetrForObjectDetection`` (softmax over the classes and no-object). ``kind="conditional"``:
    ``ConditionalDetrForObjectDetection`` ("Conditional DETR for Fast Training Convergence", arXiv 2108.06152:
    conditional spatial queries in the decoder's cross-attention, sigmoid focal classification), which learns the
    generated scenes far faster (800 steps of batch 16 at d_model 64: mAP50 0.108 against DETR's 0.0005). Both have
    ``model.model.input_projection``, so :func:`visattn.models.cdfsod.attach_cdfsod` applies. The backbone is made
    trainable by :func:`trainable_backbone`; dropout is 0.
    """
    from transformers import ResNetConfig

    if stride not in (8, 16):
        raise ValueError(f"stride must be 8 or 16, got {stride!r}")
    if kind not in ("detr", "conditional"):
        raise ValueError(f"kind must be 'detr' or 'conditional', got {kind!r}")
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48], depths=[1, 1, 1], layer_type="basic",
                            out_features=["stage3" if stride == 16 else "stage2"])
    options = dict(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                   d_model=d_model, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                   decoder_attention_heads=heads, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                   num_queries=queries, num_labels=num_classes, dropout=0.0, auxiliary_loss=auxiliary_loss,
                   attn_implementation="eager")
    if kind == "detr":
        from transformers import DetrConfig, DetrForObjectDetection

        model = DetrForObjectDetection(DetrConfig(**options))
    else:
        from transformers import ConditionalDetrConfig, ConditionalDetrForObjectDetection

        model = ConditionalDetrForObjectDetection(ConditionalDetrConfig(**options))
    return trainable_backbone(model)


def trainable_backbone(model: nn.Module) -> nn.Module:
    """Make a randomly initialised DETR's convolutional backbone trainable, in place; returns ``model``.

    transformers freezes a DETR backbone for fine-tuning a pretrained one: every ``BatchNorm2d`` becomes a frozen
    batch norm (with random init its statistics are 0 and 1, so it does not normalise) and the ResNet's stem and
    first stage get ``requires_grad=False``. Trained from scratch, that leaves a fixed random stem and no
    normalisation. Here each frozen batch norm becomes a ``GroupNorm`` (batch-independent, so few-shot batches and
    domain shifts do not move statistics) and every backbone parameter is trainable.
    """
    inner = getattr(model, "model", model)
    backbone = getattr(getattr(inner, "backbone", None), "model", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"model must be a transformers DETR-family detector with model.backbone.model, got "
                        f"{type(model).__name__}")
    for module in list(backbone.modules()):
        for name, child in list(module.named_children()):
            if type(child).__name__.endswith("FrozenBatchNorm2d"):
                channels = int(child.weight.shape[0])
                setattr(module, name, nn.GroupNorm(4 if channels % 4 == 0 else 1, channels))
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    return model


@torch.no_grad()
def predict(model: nn.Module, images: Tensor) -> list[dict[str, Tensor]]:
    """Per image ``boxes`` (pixels, xyxy), ``scores`` and ``labels``.

    DETR (softmax with a no-object class): one detection per query, its best class. Conditional DETR (sigmoid per
    class, as its post-processing): one detection per (query, class) pair, scored by that class's probability.
    """
    from torchvision.ops import box_convert

    out = model(pixel_values=images)
    height, width = images.shape[-2:]
    scale = out.pred_boxes.new_tensor([width, height, width, height])
    boxes = box_convert(out.pred_boxes, "cxcywh", "xyxy").clamp(0, 1) * scale
    if getattr(model.config, "model_type", "detr") == "detr":
        scores, labels = out.logits.softmax(-1)[..., :-1].max(-1)
        return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(boxes, scores, labels, strict=True)]
    probs = out.logits.sigmoid()
    queries, classes = probs.shape[-2:]
    labels = torch.arange(classes, device=probs.device).repeat(queries)
    return [{"boxes": b.repeat_interleave(classes, dim=0), "scores": p.reshape(-1), "labels": labels}
            for b, p in zip(boxes, probs, strict=True)]


def mean_average_precision(predictions: Sequence[dict[str, Tensor]], boxes: Sequence[Tensor],
                           labels: Sequence[Tensor]) -> dict[str, float]:
    """COCO ``map`` (IoU .5:.95) and ``map_50`` with pycocotools' COCOeval; boxes in pixels ``(x1, y1, x2, y2)``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(boxes) or len(boxes) != len(labels):
        raise ValueError(f"predictions, boxes and labels must have one entry per image, got "
                         f"{len(predictions)}, {len(boxes)}, {len(labels)}")
    images, annotations, results = [], [], []
    for i, (pred, b, lab) in enumerate(zip(predictions, boxes, labels, strict=True)):
        images.append({"id": i})
        for box, c in zip(b.tolist(), lab.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        for box, s, c in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True):
            results.append({"image_id": i, "category_id": int(c), "score": float(s),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations,
                     "categories": [{"id": k} for k in range(len(CLASSES))]}
    truth.createIndex()
    if not results:
        return {"map": 0.0, "map_50": 0.0}
    evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return {"map": max(float(evaluation.stats[0]), 0.0), "map_50": max(float(evaluation.stats[1]), 0.0)}


def finetune_detector(model: nn.Module, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                      steps: int = 200, lr: float = 1e-3, batch_size: int = 8,
                      refiner: CenterPeripheryRefiner | None = None, tsa_weight: float = 0.1,
                      generator: torch.Generator | None = None, max_grad_norm: float = 0.1,
                      refiner_lr: float | None = None) -> list[float]:
    """Fine-tune ``model`` (a DETR; with ``refiner`` already attached, if any) on a (support) set; returns losses.

    With a refiner the class prototypes and the negative context are recomputed, with gradients, from the whole
    set at every step (taken before the refiner, by :func:`detr_feature_map`). Gradients are clipped to
    ``max_grad_norm`` (0.1, as DETR and Conditional DETR train). The refiner's parameters, new and zero-started
    where they gate the refinement, train at ``refiner_lr`` (default ``lr``).
    """
    if len(boxes) != images.shape[0] or len(labels) != images.shape[0]:
        raise ValueError(f"boxes and labels need one entry per image ({images.shape[0]}), got {len(boxes)}, "
                         f"{len(labels)}")
    if sum(int(b.shape[0]) for b in boxes) == 0:
        raise ValueError("the support set is empty: boxes hold no box")
    targets = to_detr_labels(boxes, labels, images.shape[-2:])
    groups = [{"params": list(model.parameters())}]
    if refiner is not None:
        groups.append({"params": list(refiner.parameters()), "lr": lr if refiner_lr is None else refiner_lr})
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4, foreach=True)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for step in range(steps):
        index = torch.randperm(images.shape[0], generator=g)[:batch_size]
        loss_extra = images.new_zeros(())
        if refiner is not None:
            support = detr_feature_map(model, images)
            refiner.set_support(support, boxes, labels, images.shape[-2:])
            loss_extra = tsa_weight * refiner.alignment_loss()
        out = model(pixel_values=images[index], labels=[targets[i] for i in index.tolist()])
        loss = out.loss + loss_extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            logger.info("step %d loss %.4f", step, losses[-1])
    if refiner is not None:
        with torch.no_grad():
            support = detr_feature_map(model, images)
            refiner.set_support(support, boxes, labels, images.shape[-2:])
    model.eval()
    return losses


@torch.no_grad()
def attention_distances(model: nn.Module, images: Tensor) -> Tensor:
    """Mean attention distance (feature cells) of each encoder layer, averaged over heads and images, ``(L,)``.

    The encoder's self-attention is recorded with :func:`visattn.lens.capture.capture` (its Hugging Face adapter
    routes DETR's attention) and measured with :func:`visattn.lens.metrics.mean_attention_distance` on the
    backbone's feature grid.
    """
    from ..lens.capture import capture
    from ..lens.metrics.distance import mean_attention_distance

    with capture(model, within="model.encoder") as recording:
        model(pixel_values=images)
    if not recording.names:
        raise ValueError(f"no encoder attention was recorded in {type(model).__name__}")
    h, w = _grid(model, images)
    return torch.stack([mean_attention_distance(recording.get("probs", i).tensor, (h, w)).mean()
                        for i in sorted(recording.names)])


def _grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    feature = detr_feature_map(model, images[:1])
    return int(feature.shape[-2]), int(feature.shape[-1])
