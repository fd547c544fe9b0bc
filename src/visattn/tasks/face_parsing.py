"""Face parsing with RTNet: synthetic face-like scenes, a Helen/LaPa-style folder loader, metrics and training.

Paper: Lin et al., "RoI Tanh-polar Transformer Network for Face Parsing in the Wild", arXiv 2102.02717 (network:
:class:`visattn.models.rtnet.RTNet`). Classes follow iBugMask's 11 (:data:`CLASSES`, 0 = background).

- :func:`synthetic_faces`: seeded scenes of one face each, anywhere in the image, at any in-plane rotation and at
  face heights from a quarter to four fifths of the image: a skin ellipse with hair behind its upper half, brows, eyes,
  nose and three lip/mouth bands, each an ellipse in the face's own frame; per-image jittered colours over a
  smooth random background with distractor blobs, plus pixel noise. Returns images, labels and the face boxes (the
  skin ellipse's axis-aligned box, jittered), as a detector would give.
- :class:`FaceParsingFolder`: the standard dataset layout, ``root/images/<name>.{jpg,png}`` beside
  ``root/labels/<name>.png`` (class index per pixel; LaPa's ``train/``, ``val/``, ``test/`` folders and the
  Helen release used by the authors have this layout); the box is that of the labelled face classes.
- :func:`segmentation_scores`: per-class IoU and F1 from scikit-learn's confusion matrix, their means over the
  foreground classes present (mIoU, mean F1).
- :func:`train_face_parser`: cross-entropy in the warped frame (labels warped with the background flip), AdamW;
  evaluation on held-out scenes in the image frame after the restore.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CLASSES",
    "FaceParsingFolder",
    "FaceParsingReport",
    "evaluate_face_parser",
    "segmentation_scores",
    "synthetic_faces",
    "train_face_parser",
]

log = logging.getLogger(__name__)

CLASSES = ("background", "skin", "left_eyebrow", "right_eyebrow", "left_eye", "right_eye", "nose", "upper_lip",
           "inner_mouth", "lower_lip", "hair")
"""iBugMask's 11 classes, in label order."""

_PARTS = (
    # (class, centre u, centre v, radius u, radius v) in the face frame (skin ellipse = unit disk); drawn in order
    (1, 0.0, 0.0, 1.0, 1.0),
    (2, -0.38, -0.42, 0.22, 0.07),
    (3, 0.38, -0.42, 0.22, 0.07),
    (4, -0.36, -0.2, 0.16, 0.08),
    (5, 0.36, -0.2, 0.16, 0.08),
    (6, 0.0, 0.1, 0.12, 0.22),
    (7, 0.0, 0.5, 0.32, 0.07),
    (8, 0.0, 0.57, 0.27, 0.04),
    (9, 0.0, 0.65, 0.3, 0.08),
)
_COLOURS = torch.tensor([
    [0.5, 0.5, 0.5], [0.85, 0.65, 0.5], [0.25, 0.15, 0.1], [0.25, 0.15, 0.1], [0.95, 0.95, 0.95],
    [0.95, 0.95, 0.95], [0.75, 0.5, 0.4], [0.75, 0.3, 0.3], [0.2, 0.05, 0.05], [0.7, 0.25, 0.3], [0.3, 0.2, 0.1]])


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def synthetic_faces(count: int, size: int | Sequence[int] = 96, generator: torch.Generator | None = None,
                    scale: tuple[float, float] = (0.12, 0.4), max_rotation: float = math.pi / 4,
                    noise: float = 0.04) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` synthetic face scenes: images ``(count, 3, H, W)`` in ``[0, 1]``, labels ``(count, H, W)``
    (int64, :data:`CLASSES`) and boxes ``(count, 4)`` ``(x1, y1, x2, y2)``. ``scale`` bounds the face's vertical
    semi-axis as a fraction of the image height; ``max_rotation`` bounds the in-plane rotation (radians)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if min(height, width) < 16:
        raise ValueError(f"size must be at least 16 pixels a side, got {size!r}")
    if not 0 < scale[0] <= scale[1] <= 0.5:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 0.5, got {scale!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    ys = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    xs = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    images, labels, boxes = [], [], []
    for _ in range(count):
        b = _uniform(generator, *scale) * height
        a = b * _uniform(generator, 0.7, 0.85)
        cy = _uniform(generator, b, height - 1 - b)
        cx = _uniform(generator, a, width - 1 - a)
        angle = _uniform(generator, -max_rotation, max_rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        u = (cos * (xs - cx) + sin * (ys - cy)) / a
        v = (-sin * (xs - cx) + cos * (ys - cy)) / b
        label = torch.zeros(height, width, dtype=torch.int64)
        hair = ((u / 1.18) ** 2 + ((v + 0.2) / 1.12) ** 2 <= 1) & (v < 0.15)
        label[hair] = 10
        for cls, u0, v0, ru, rv in _PARTS:
            label[((u - u0) / ru) ** 2 + ((v - v0) / rv) ** 2 <= 1] = cls
        colours = (_COLOURS + 0.12 * (torch.rand(_COLOURS.shape, generator=generator) - 0.5)).clamp(0, 1)
        coarse = torch.rand(1, 3, 4, 4, generator=generator)
        background = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        for _ in range(3):
            by, bx = _uniform(generator, 0, height), _uniform(generator, 0, width)
            r = _uniform(generator, 0.05, 0.2) * height
            blob = (ys - by) ** 2 + (xs - bx) ** 2 <= r * r
            background[:, blob] = torch.rand(3, 1, generator=generator)
        image = torch.where(label[None] > 0, colours[label].permute(2, 0, 1), background)
        image = image + noise * torch.randn(image.shape, generator=generator)
        half_w = math.sqrt((a * cos) ** 2 + (b * sin) ** 2)
        half_h = math.sqrt((a * sin) ** 2 + (b * cos) ** 2)
        jitter = [_uniform(generator, -0.05, 0.05) for _ in range(4)]
        box = [cx - half_w * (1 + jitter[0]), cy - half_h * (1 + jitter[1]), cx + half_w * (1 + jitter[2]),
               cy + half_h * (1 + jitter[3])]
        images.append(image.clamp(0, 1).float())
        labels.append(label)
        boxes.append(box)
    return torch.stack(images), torch.stack(labels), torch.tensor(boxes, dtype=torch.float32)


class FaceParsingFolder(torch.utils.data.Dataset):
    """A face-parsing dataset in the standard layout: ``root/images/<name>.{jpg,jpeg,png}`` and
    ``root/labels/<name>.png`` (one class index per pixel, 0 = background).

    ``dataset[i]`` is ``(image (3, H, W) float in [0, 1], label (H, W) int64, box (4,) float (x1, y1, x2, y2))``;
    the box spans the pixels whose class is in ``box_classes`` (default: every foreground class but
    ``hair_class``), slightly enlarged by ``box_margin`` of its size, as a face detector's box would be.
    """

    IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

    def __init__(self, root: str | Path, box_classes: Sequence[int] | None = None, hair_class: int | None = 10,
                 box_margin: float = 0.05) -> None:
        self.root = Path(root)
        images, labels = self.root / "images", self.root / "labels"
        if not images.is_dir() or not labels.is_dir():
            raise ValueError(f"root must hold images/ and labels/ folders, got {str(self.root)!r}")
        self.items = []
        for label in sorted(labels.glob("*.png")):
            found = [images / f"{label.stem}{s}" for s in self.IMAGE_SUFFIXES if (images / f"{label.stem}{s}").exists()]
            if found:
                self.items.append((found[0], label))
        if not self.items:
            raise ValueError(f"root={str(self.root)!r} has no labels/<name>.png with a matching images/<name> file")
        self.box_classes = None if box_classes is None else tuple(int(c) for c in box_classes)
        self.hair_class, self.box_margin = hair_class, float(box_margin)

    def __len__(self) -> int:
        return len(self.items)

    def box(self, label: Tensor) -> Tensor:
        """The enlarged box of the face classes in ``label`` ``(H, W)``; the whole image when there are none."""
        if self.box_classes is not None:
            mask = torch.isin(label, torch.tensor(self.box_classes))
        else:
            mask = (label > 0) & (label != (self.hair_class if self.hair_class is not None else -1))
        height, width = label.shape
        if not bool(mask.any()):
            return torch.tensor([0.0, 0.0, width - 1.0, height - 1.0])
        rows, cols = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
        x1, x2, y1, y2 = float(cols[0]), float(cols[-1]), float(rows[0]), float(rows[-1])
        mx, my = self.box_margin * max(x2 - x1, 1.0), self.box_margin * max(y2 - y1, 1.0)
        return torch.tensor([max(x1 - mx, 0.0), max(y1 - my, 0.0), min(x2 + mx, width - 1.0),
                             min(y2 + my, height - 1.0)])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        import numpy as np
        from PIL import Image

        image_path, label_path = self.items[index]
        image = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0
        label = torch.from_numpy(np.asarray(Image.open(label_path), dtype=np.int64).copy())
        if label.dim() != 2 or label.shape != image.shape[:2]:
            raise ValueError(f"{label_path} must be a single-channel class map of the image's size "
                             f"{image.shape[:2]}, got shape {tuple(label.shape)}")
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), label, self.box(label)


def segmentation_scores(pred: Tensor, target: Tensor, num_classes: int) -> dict[str, object]:
    """Per-class IoU ``TP / (TP + FP + FN)`` and F1 ``2 TP / (2 TP + FP + FN)`` from
    ``sklearn.metrics.confusion_matrix`` over all pixels of ``pred`` and ``target`` (integer maps, one shape);
    classes absent from both are NaN. ``miou`` and ``mean_f1`` average the foreground classes (1..K-1) that are
    not NaN."""
    import numpy as np
    from sklearn.metrics import confusion_matrix

    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    matrix = confusion_matrix(target.reshape(-1).cpu().numpy(), pred.reshape(-1).cpu().numpy(),
                              labels=list(range(num_classes))).astype(np.float64)
    tp = np.diag(matrix)
    fp, fn = matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        f1 = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {"iou": iou.tolist(), "f1": f1.tolist(), "miou": float(np.nanmean(iou[1:])),
            "mean_f1": float(np.nanmean(f1[1:]))}


@dataclass
class FaceParsingReport:
    """Training losses and the held-out scores (image frame, after the restore)."""

    losses: list[float] = field(default_factory=list)
    scores: dict[str, object] = field(default_factory=dict)


@torch.no_grad()
def evaluate_face_parser(model: nn.Module, images: Tensor, labels: Tensor, boxes: Tensor,
                         batch_size: int = 8) -> dict[str, object]:
    """:func:`segmentation_scores` of ``model.predict(images, boxes).argmax(1)`` against ``labels``."""
    was_training = model.training
    model.eval()
    pred = torch.cat([model.predict(images[i:i + batch_size], boxes[i:i + batch_size]).argmax(1)
                      for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return segmentation_scores(pred, labels, model.num_classes)


def train_face_parser(model: nn.Module, steps: int = 300, batch_size: int = 8, size: int = 96, lr: float = 2e-3,
                      seed: int = 0, eval_count: int = 32, log_every: int = 50) -> FaceParsingReport:
    """Train an :class:`~visattn.models.rtnet.RTNet` on fresh :func:`synthetic_faces` for ``steps`` AdamW steps
    (cross-entropy in the warped frame against :meth:`~visattn.models.rtnet.RTNet.warp_labels`); evaluate on
    ``eval_count`` held-out scenes (another seed)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * 1e-2)
    report = FaceParsingReport()
    model.train()
    for step in range(steps):
        images, labels, boxes = synthetic_faces(batch_size, size, generator)
        loss = F.cross_entropy(model(images, boxes), model.warp_labels(labels, boxes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        report.losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log.info("step %d loss %.4f", step + 1, report.losses[-1])
    test = synthetic_faces(eval_count, size, torch.Generator().manual_seed(seed + 10_000))
    report.scores = evaluate_face_parser(model, *test)
    return report
