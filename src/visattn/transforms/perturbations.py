"""Vision Matters visual perturbations: distractor concatenation, dominance-preserving mixup, random rotation.

Li et al., "Vision Matters: Simple Visual Perturbations Can Boost Multimodal Math Reasoning", arXiv 2506.09736.
Three training-time perturbations of the image, following the authors' scripts (``Visual-Perturbation/``):

- distractor concatenation: the distractor is resized to the original's height ``H`` (keeping its aspect ratio,
  width ``int(w2 H / h2)``), both are resized to ``(H, max(w1, w2') // 2)`` (bicubic) and put side by side,
  ``[original | distractor]``;
- dominance-preserving mixup: both images are letterboxed onto a white ``256 x 256`` canvas (scaled by
  ``min(256 / w, 256 / h)``, sizes truncated to ints, centred) and mixed, ``x = lam x_main + (1 - lam) x_other``
  with ``lam ~ U[0.7, 0.9]``, so the main image dominates;
- random rotation: ``angle ~ U[-180, 180]`` degrees (counter-clockwise on screen) about pixel ``(w // 2, h // 2)``
  onto an expanded canvas of ``(int(h |cos| + w |sin|), int(h |sin| + w |cos|))``, bilinear, white fill. As in
  the authors' OpenCV code the canvas centre is ``new / 2``, so an odd side moves by half a pixel even at angle 0.

Images are ``(C, H, W)`` or ``(B, C, H, W)`` tensors, float in ``[0, 1]`` (white = 1) or ``uint8`` (white = 255),
or PIL images (converted to ``uint8`` tensors and back). Float outputs are clamped to ``[0, 1]`` (bicubic
overshoot) and stay differentiable; ``uint8`` outputs are rounded. The mixup letterbox resizes with antialiased
bicubic where the authors used PIL's Lanczos. The transform classes are ``torchvision.transforms.v2`` transforms:
they take the sample's image (tensor, ``tv_tensors.Image`` or PIL), pass labels through, refuse boxes, masks and
key points (which they would not move), and draw their random parameters from their own generator when given a
``seed`` (same seed, same sequence of outputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = [
    "DistractorConcat",
    "DominanceMixup",
    "RandomRotationExpand",
    "concat_distractor",
    "dominance_mixup",
    "letterbox",
    "rotate_expand",
]

Image = Tensor | PIL.Image.Image


def _as_tensor(image: Image, name: str) -> tuple[Tensor, bool]:
    """``(tensor (B, C, H, W), was_3d)``; PIL -> ``uint8``."""
    if isinstance(image, PIL.Image.Image):
        image = TF.pil_to_tensor(image)
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a tensor or a PIL image, got {type(image).__name__}")
    if image.dim() not in (3, 4):
        raise ValueError(f"{name} must be shaped (C, H, W) or (B, C, H, W), got {tuple(image.shape)}")
    if not (image.is_floating_point() or image.dtype == torch.uint8):
        raise TypeError(f"{name} must be floating point in [0, 1] or uint8, got {image.dtype}")
    return (image.unsqueeze(0), True) if image.dim() == 3 else (image.as_subclass(Tensor), False)


def _finish(out: Tensor, like: Image, was_3d: bool, dtype: torch.dtype) -> Image:
    out = out.clamp(0, 255).round().to(torch.uint8) if dtype == torch.uint8 else out.clamp(0, 1).to(dtype)
    if was_3d:
        out = out[0]
    if isinstance(like, PIL.Image.Image):
        return TF.to_pil_image(out)
    if isinstance(like, tv_tensors.Image):
        return tv_tensors.wrap(out, like=like)
    return out


def _work(t: Tensor) -> Tensor:
    return t.float() if t.dtype == torch.uint8 or t.dtype in (torch.float16, torch.bfloat16) else t


def _white(dtype: torch.dtype) -> float:
    return 255.0 if dtype == torch.uint8 else 1.0


def _resize(x: Tensor, size: tuple[int, int], antialias: bool = False) -> Tensor:
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=antialias)


def _match(x: Tensor, y: Tensor, name: str) -> Tensor:
    if y.shape[0] not in (1, x.shape[0]) or y.shape[1] != x.shape[1]:
        raise ValueError(f"{name} must have {x.shape[1]} channels and batch 1 or {x.shape[0]}, got {tuple(y.shape)}")
    return y.to(device=x.device).expand(x.shape[0], *y.shape[1:])


def concat_distractor(image: Image, distractor: Image) -> Image:
    """``[image | distractor]``, both resized to ``(H, max(w1, w2') // 2)`` (arXiv 2506.09736): ``(C, H, 2 half)``.

    ``w2' = int(w2 H / h2)`` is the distractor's width at the image's height ``H``.
    """
    x, was_3d = _as_tensor(image, "image")
    d, _ = _as_tensor(distractor, "distractor")
    d = _match(x, d, "distractor")
    height, w1 = x.shape[-2:]
    h2, w2 = d.shape[-2:]
    dtype = x.dtype
    xw, dw = _work(x), _work(d).to(_work(x).dtype)
    if h2 != height:
        w2 = int(w2 * (height / h2))
        if w2 < 1:
            raise ValueError(f"distractor of size {(h2, d.shape[-1])} has width 0 at height {height}")
        dw = _resize(dw, (height, w2))
    half = max(w1, w2) // 2
    if half < 1:
        raise ValueError(f"image and distractor are too narrow to halve: widths {w1} and {w2}")
    out = torch.cat((_resize(xw, (height, half)), _resize(dw, (height, half))), dim=-1)
    return _finish(out, image, was_3d, dtype)


def letterbox(image: Image, size: int = 256) -> Image:
    """Scale ``image`` by ``min(size / w, size / h)`` (sizes truncated) and centre it on a white ``size x size``
    canvas (offsets ``(size - new) // 2``), as the mixup of arXiv 2506.09736 does."""
    x, was_3d = _as_tensor(image, "image")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    return _finish(_letterbox(x, size), image, was_3d, x.dtype)


def _letterbox(x: Tensor, size: int) -> Tensor:
    height, width = x.shape[-2:]
    ratio = min(size / width, size / height)
    new_w, new_h = max(int(width * ratio), 1), max(int(height * ratio), 1)
    white = _white(x.dtype)
    scaled = _resize(_work(x), (new_h, new_w), antialias=True).clamp(0, white)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(scaled, (left, size - new_w - left, top, size - new_h - top), value=white)


def dominance_mixup(main: Image, other: Image, lam: float | Tensor, size: int = 256) -> Image:
    """``lam letterbox(main) + (1 - lam) letterbox(other)`` (each letterbox clipped to the value range, as the
    authors' 8-bit images are) on white ``size x size`` canvases (arXiv 2506.09736).

    ``lam`` in ``[0, 1]`` (the paper draws it from ``U[0.7, 0.9]``; :class:`DominanceMixup` does), a float or a
    tensor broadcastable to the batch (it may require grad).
    """
    x, was_3d = _as_tensor(main, "main")
    o, _ = _as_tensor(other, "other")
    o = _match(x, o, "other")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if not isinstance(lam, Tensor):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1:
            raise ValueError(f"lam must be a real number in [0, 1], got {lam!r}")
    else:
        lam = lam.to(x.device).reshape(-1, 1, 1, 1)
    a, b = _letterbox(x, size), _letterbox(o, size).to(_work(x).dtype)
    return _finish(lam * a + (1 - lam) * b, main, was_3d, x.dtype)


def rotate_expand(image: Image, angle: float) -> Image:
    """Rotate by ``angle`` degrees (counter-clockwise on screen) about pixel ``(w // 2, h // 2)`` onto the expanded
    canvas ``(int(h |cos| + w |sin|), int(h |sin| + w |cos|))`` with white fill, bilinear (arXiv 2506.09736).

    Output pixel ``p'`` reads ``c + A^T (p' - (new_w / 2, new_h / 2))``, ``A = [[cos, sin], [-sin, cos]]``.
    """
    x, was_3d = _as_tensor(image, "image")
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not math.isfinite(angle):
        raise TypeError(f"angle must be a finite real number of degrees, got {angle!r}")
    height, width = x.shape[-2:]
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    new_w = int(height * abs(sin) + width * abs(cos))
    new_h = int(height * abs(cos) + width * abs(sin))
    work = _work(x)
    ys = torch.arange(new_h, device=x.device, dtype=work.dtype)[:, None] - new_h / 2
    xs = torch.arange(new_w, device=x.device, dtype=work.dtype)[None, :] - new_w / 2
    src_x = (width // 2) + cos * xs - sin * ys
    src_y = (height // 2) + sin * xs + cos * ys
    grid = torch.stack((2 * src_x / max(width - 1, 1) - 1, 2 * src_y / max(height - 1, 1) - 1), dim=-1)
    white = _white(x.dtype)
    grid = grid.unsqueeze(0).expand(x.shape[0], new_h, new_w, 2)
    out = F.grid_sample(work - white, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + white
    return _finish(out, image, was_3d, x.dtype)


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class _Perturbation(v2.Transform):
    _transformed_types = (tv_tensors.Image, PIL.Image.Image, TF.is_pure_tensor)

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        for item in flat_inputs:
            if isinstance(item, (tv_tensors.BoundingBoxes, tv_tensors.Mask, tv_tensors.KeyPoints, tv_tensors.Video)):
                raise TypeError(f"{type(self).__name__} does not transform {type(item).__name__}; pass images only")


class _Pool:
    """A non-empty sequence of images or a callable ``generator -> image``."""

    def __init__(self, images: Sequence[Image] | Callable[[torch.Generator | None], Image], name: str) -> None:
        if callable(images):
            self.draw = images
            return
        if not isinstance(images, Sequence) or isinstance(images, str) or len(images) == 0:
            raise ValueError(f"{name} must be a non-empty sequence of images or a callable, got {images!r}")
        self.images = list(images)
        self.draw = self._pick

    def _pick(self, generator: torch.Generator | None) -> Image:
        return self.images[int(torch.randint(len(self.images), (), generator=generator))]


class DistractorConcat(_Perturbation):
    """Concatenate a random distractor from ``distractors`` to the right of the image (:func:`concat_distractor`)."""

    def __init__(self, distractors: Sequence[Image] | Callable[[torch.Generator | None], Image],
                 seed: int | None = None) -> None:
        super().__init__()
        self.pool, self.generator = _Pool(distractors, "distractors"), _generator(seed)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"distractor": self.pool.draw(self.generator)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return concat_distractor(inpt, params["distractor"])


class DominanceMixup(_Perturbation):
    """Mix the image (weight ``lam ~ U[lam_range]``, default ``[0.7, 0.9]``) with a random image from ``others``
    on white ``size x size`` letterboxes (:func:`dominance_mixup`)."""

    def __init__(self, others: Sequence[Image] | Callable[[torch.Generator | None], Image], size: int = 256,
                 lam_range: tuple[float, float] = (0.7, 0.9), seed: int | None = None) -> None:
        super().__init__()
        low, high = lam_range
        if not 0 <= low <= high <= 1:
            raise ValueError(f"lam_range must satisfy 0 <= low <= high <= 1, got {lam_range!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        self.pool, self.size, self.lam_range = _Pool(others, "others"), size, (float(low), float(high))
        self.generator = _generator(seed)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"other": self.pool.draw(self.generator), "lam": _uniform(*self.lam_range, self.generator)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return dominance_mixup(inpt, params["other"], params["lam"], self.size)


class RandomRotationExpand(_Perturbation):
    """Rotate by ``angle ~ U[-degrees, degrees]`` (default 180) onto an expanded white canvas
    (:func:`rotate_expand`)."""

    def __init__(self, degrees: float = 180.0, seed: int | None = None) -> None:
        super().__init__()
        if isinstance(degrees, bool) or not isinstance(degrees, (int, float)) or not 0 <= degrees <= 360:
            raise ValueError(f"degrees must be a real number in [0, 360], got {degrees!r}")
        self.degrees, self.generator = float(degrees), _generator(seed)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"angle": _uniform(-self.degrees, self.degrees, self.generator)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return rotate_expand(inpt, params["angle"])
