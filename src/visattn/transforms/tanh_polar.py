"""RoI tanh-polar and tanh-Cartesian warps and their restores (RTNet).

Lin et al., "RoI Tanh-polar Transformer Network for Face Parsing in the Wild", arXiv 2102.02717. A region of
interest (box ``(x1, y1, x2, y2)`` in pixels, pixel centres at integers, optionally rotated by ``angle`` radians)
is warped so that the whole image lands in a fixed-size map: the RoI at a fixed resolution, the context
compressed by ``tanh``. With the box centre ``c``, ``r = (w, h) / sqrt(pi)`` (the ellipse of the box's area) and
``Rot(a)(x, y) = (x cos a - y sin a, x sin a + y cos a)``:

Tanh-polar, output ``(H_t, W_t)`` = (angles, radii); row ``j``, column ``k``::

    u = k / W_t,  theta = 2 pi j / H_t
    d = artanh(u) (r_x cos theta, r_y sin theta)                                       (keep_aspect_ratio=False)
    d = artanh(u) R(theta) (cos theta, sin theta),  R(theta) = r_x r_y / sqrt(r_y^2 cos^2 + r_x^2 sin^2)   (True)
    warped[j, k] = image(c + Rot(angle) d)

so the RoI ellipse (``|d / r| = 1``, resp. ``|d| = R(theta)``) lands on column ``tanh(1) W_t`` in every row.

Tanh-Cartesian, output ``(H_t, W_t)``; ``u = -1 + (2 k + 1) / W_t``, ``v = -1 + (2 j + 1) / H_t``::

    warped[j, k] = image(c + Rot(angle)(w / 2 artanh(u), h / 2 artanh(v)))

The restores invert the coordinate maps: pixel ``p`` has ``d = Rot(-angle)(p - c)``; tanh-polar reads column
``tanh(rho) W_t`` (``rho = |d / r|``, resp. ``|d| / R(phi)``) and row ``(phi / 2 pi mod 1) H_t`` with the angle
axis periodic; tanh-Cartesian reads ``tanh(d / (w / 2, h / 2))`` in the normalised coordinates of the warped map.
Everything is bilinear ``grid_sample``, batched (one box and angle per image), differentiable in the images, the
boxes and the angles. The formulas follow the authors' reference implementation (``hhj1897/roi_tanh_warping``):
``padding_mode="zeros"`` outside the image, and columns past the last ring read 0 in the restore (``"border"``
repeats the last ring instead).

Segmentation maps: restoring class probabilities with zero padding makes pixels outside the warped domain
"no class". :func:`restore_probabilities` flips the background channel (``1 - p``) before the restore and back
after, so that those pixels read as background, the trick of the authors' face parser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._args import check_map as _check_map
from ._args import pair as _pair
from ._args import work_dtype

__all__ = [
    "restore_probabilities",
    "roi_tanh_polar_restore",
    "roi_tanh_polar_warp",
    "roi_tanh_restore",
    "roi_tanh_warp",
    "tanh_cartesian_to_tanh_polar",
    "tanh_polar_to_tanh_cartesian",
]

_PADDING = ("zeros", "border", "reflection")


def _sequence_box(boxes: object) -> list[float]:
    """A single box given as a Python sequence of 4 finite numbers."""
    if not isinstance(boxes, Sequence) or isinstance(boxes, str) or len(boxes) != 4:
        raise TypeError(f"boxes must be a (B, 4) or (4,) tensor or a sequence of 4 numbers, got {boxes!r}")
    values = []
    for v in boxes:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"boxes must be a (B, 4) or (4,) tensor or a sequence of 4 numbers, got {boxes!r}")
        values.append(float(v))
    return values


def _box_problem(b: list[float], size: tuple[int, int] | None) -> str | None:
    x1, y1, x2, y2 = b
    if not all(math.isfinite(v) for v in b) or not (x1 < x2 and y1 < y2):
        return "x1 < x2 and y1 < y2"
    if size is not None and (x2 < 0 or x1 > size[1] - 1 or y2 < 0 or y1 > size[0] - 1):
        return f"an overlap with the image [0, {size[1] - 1}] x [0, {size[0] - 1}] (pixel centres)"
    return None


def _boxes(boxes: Tensor | Sequence[float], batch: int, size: tuple[int, int] | None, like: Tensor) -> Tensor:
    """``(B, 4)`` boxes on ``like``'s device and dtype. Values are checked when they are on the host (sequences and
    CPU tensors; checking a CUDA tensor would synchronise the device): ``x1 < x2``, ``y1 < y2`` and, when ``size``
    is given, the box must overlap the image ``[0, W - 1] x [0, H - 1]``."""
    if not isinstance(boxes, Tensor):
        rows = [_sequence_box(boxes)]
        tensor = like.new_tensor(rows[0]).expand(batch, 4)
    else:
        if boxes.shape == (4,):
            boxes = boxes.expand(batch, 4)
        if boxes.dim() != 2 or boxes.shape != (batch, 4):
            raise ValueError(f"boxes must be shaped (4,) or (B, 4) = ({batch}, 4), got {tuple(boxes.shape)}")
        rows = boxes.detach().to(torch.float64).tolist() if boxes.device.type == "cpu" else []
        tensor = boxes.to(device=like.device, dtype=like.dtype)
    for i, row in enumerate(rows):
        problem = _box_problem(row, size)
        if problem is not None:
            raise ValueError(f"boxes[{i}] = {row} must be (x1, y1, x2, y2) with {problem}")
    return tensor


def _angles(angle: float | Tensor, batch: int, like: Tensor) -> Tensor:
    if isinstance(angle, Tensor):
        if angle.dim() == 0:
            angle = angle.expand(batch)
        if angle.shape != (batch,):
            raise ValueError(f"angle must be a float, a 0-d tensor or shaped (B,) = ({batch},), got "
                             f"{tuple(angle.shape)}")
        return angle.to(device=like.device, dtype=like.dtype)
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not math.isfinite(angle):
        raise TypeError(f"angle must be a finite real number or a tensor, got {angle!r}")
    return like.new_full((batch,), float(angle))


def _ellipse_radius(r: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``R(theta) = r_x r_y / sqrt(r_y^2 cos^2 + r_x^2 sin^2)``; ``r`` is ``(B, 2)``, ``cos``/``sin`` broadcast."""
    rx, ry = r[:, 0, None, None], r[:, 1, None, None]
    return rx * ry / torch.sqrt(ry * ry * cos * cos + rx * rx * sin * sin)


def _roi_offsets_polar(out_size: tuple[int, int], radii: Tensor, keep_aspect_ratio: bool) -> tuple[Tensor, Tensor]:
    """RoI-frame offsets ``(d_x, d_y)``, each ``(B, H_t, W_t)``, of the tanh-polar samples."""
    angles, rings = out_size
    like = radii
    u = torch.arange(rings, device=like.device, dtype=like.dtype) / rings
    theta = torch.arange(angles, device=like.device, dtype=like.dtype) * (2 * math.pi / angles)
    rho = torch.atanh(u)[None, None, :]
    cos, sin = torch.cos(theta)[None, :, None], torch.sin(theta)[None, :, None]
    if keep_aspect_ratio:
        rho = rho * _ellipse_radius(radii, cos, sin)
        return rho * cos, rho * sin
    return radii[:, 0, None, None] * rho * cos, radii[:, 1, None, None] * rho * sin


def _roi_offsets_cartesian(out_size: tuple[int, int], half: Tensor) -> tuple[Tensor, Tensor]:
    """RoI-frame offsets ``(d_x, d_y)``, each ``(B, H_t, W_t)``, of the tanh-Cartesian samples."""
    height, width = out_size
    u = (2 * torch.arange(width, device=half.device, dtype=half.dtype) + 1) / width - 1
    v = (2 * torch.arange(height, device=half.device, dtype=half.dtype) + 1) / height - 1
    dx = half[:, 0, None, None] * torch.atanh(u)[None, None, :]
    dy = half[:, 1, None, None] * torch.atanh(v)[None, :, None]
    return dx.expand(-1, height, -1), dy.expand(-1, -1, width)


def _to_image(dx: Tensor, dy: Tensor, centres: Tensor, angle: Tensor, size: tuple[int, int]) -> Tensor:
    """``c + Rot(angle)(d)`` as an ``align_corners=True`` grid ``(B, ..., 2)`` over an image of ``size``."""
    height, width = size
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    x = centres[:, 0, None, None] + cos * dx - sin * dy
    y = centres[:, 1, None, None] + sin * dx + cos * dy
    return torch.stack((2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1), dim=-1)


def _from_image(size: tuple[int, int], centres: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    """RoI-frame offsets ``Rot(-angle)(p - c)`` of every pixel ``p``, each ``(B, H, W)``."""
    height, width = size
    px = torch.arange(width, device=centres.device, dtype=centres.dtype)[None, None, :] - centres[:, 0, None, None]
    py = torch.arange(height, device=centres.device, dtype=centres.dtype)[None, :, None] - centres[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return cos * px + sin * py, -sin * px + cos * py


def _polar_coordinates(dx: Tensor, dy: Tensor, radii: Tensor, keep_aspect_ratio: bool) -> tuple[Tensor, Tensor]:
    """Normalised radius ``rho`` and angle ``phi`` of RoI-frame offsets (inverse of :func:`_roi_offsets_polar`)."""
    if keep_aspect_ratio:
        phi = torch.atan2(dy, dx)
        rho = torch.sqrt(dx * dx + dy * dy) / _ellipse_radius(radii, torch.cos(phi), torch.sin(phi))
    else:
        nx, ny = dx / radii[:, 0, None, None], dy / radii[:, 1, None, None]
        phi = torch.atan2(ny, nx)
        rho = torch.sqrt(nx * nx + ny * ny)
    return rho, phi


def _sample_polar(warped: Tensor, rho: Tensor, phi: Tensor, padding_mode: str) -> Tensor:
    """Read a tanh-polar map at column ``tanh(rho) W_t`` and periodic row ``(phi / 2 pi mod 1) H_t``."""
    angles, rings = warped.shape[-2:]
    outer = warped[..., -1:] if padding_mode == "border" else torch.zeros_like(warped[..., -1:])
    padded = torch.cat((warped, outer), dim=-1)
    padded = torch.cat((padded, padded[..., :1, :]), dim=-2)
    col = torch.tanh(rho) * rings
    row = torch.remainder(phi, 2 * math.pi) * (angles / (2 * math.pi))
    grid = torch.stack((2 * col / rings - 1, 2 * row / angles - 1), dim=-1)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _prepare(x: Tensor, name: str, layout: str) -> tuple[Tensor, Tensor]:
    _check_map(x, name, layout)
    work = x.to(work_dtype(x))
    return work, work.new_empty(0)


def _geometry(boxes: Tensor | Sequence[float], batch: int, size: tuple[int, int], like: Tensor):
    b = _boxes(boxes, batch, size, like)
    centres = (b[:, :2] + b[:, 2:]) / 2
    extent = b[:, 2:] - b[:, :2]
    return centres, extent


def _check_padding(padding_mode: str) -> None:
    if padding_mode not in _PADDING:
        raise ValueError(f"padding_mode must be one of {_PADDING}, got {padding_mode!r}")


def roi_tanh_polar_warp(images: Tensor, boxes: Tensor | Sequence[float], out_size: Sequence[int],
                        angle: float | Tensor = 0.0, keep_aspect_ratio: bool = False,
                        padding_mode: str = "zeros") -> Tensor:
    """RoI tanh-polar warp of ``images`` ``(B, C, H, W)`` to ``(B, C, H_t, W_t)`` (rows = angles, columns = radii).

    ``warped[j, k] = image(c + Rot(angle) artanh(k / W_t) ...)``, see the module docstring (arXiv 2102.02717).
    ``boxes``: ``(B, 4)`` or ``(4,)`` as ``(x1, y1, x2, y2)`` pixels; ``angle``: radians, float or ``(B,)``.
    """
    work, like = _prepare(images, "images", "(B, C, H, W)")
    _check_padding(padding_mode)
    size = (images.shape[-2], images.shape[-1])
    target = _pair(out_size, "out_size", (1, 1))
    centres, extent = _geometry(boxes, images.shape[0], size, like)
    dx, dy = _roi_offsets_polar(target, extent / math.sqrt(math.pi), keep_aspect_ratio)
    grid = _to_image(dx, dy, centres, _angles(angle, images.shape[0], like), size)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out.to(images.dtype)


def roi_tanh_polar_restore(warped: Tensor, boxes: Tensor | Sequence[float], size: Sequence[int],
                           angle: float | Tensor = 0.0, keep_aspect_ratio: bool = False,
                           padding_mode: str = "zeros") -> Tensor:
    """Inverse of :func:`roi_tanh_polar_warp`: ``(B, C, H_t, W_t)`` -> ``(B, C, H, W)`` for ``size=(H, W)``.

    Pixel ``p`` reads column ``tanh(rho) W_t`` and row ``(phi / 2 pi mod 1) H_t`` (periodic); past the last column
    it reads 0 (``padding_mode="zeros"``, the reference implementation) or the last column (``"border"``).
    """
    work, like = _prepare(warped, "warped", "(B, C, H_t, W_t)")
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    target = _pair(size, "size", (1, 1))
    centres, extent = _geometry(boxes, warped.shape[0], target, like)
    dx, dy = _from_image(target, centres, _angles(angle, warped.shape[0], like))
    rho, phi = _polar_coordinates(dx, dy, extent / math.sqrt(math.pi), keep_aspect_ratio)
    return _sample_polar(work, rho, phi, padding_mode).to(warped.dtype)


def roi_tanh_warp(images: Tensor, boxes: Tensor | Sequence[float], out_size: Sequence[int],
                  angle: float | Tensor = 0.0, padding_mode: str = "zeros") -> Tensor:
    """RoI tanh-Cartesian warp ``(B, C, H, W)`` -> ``(B, C, H_t, W_t)``:
    ``warped[j, k] = image(c + Rot(angle)(w / 2 artanh(u_k), h / 2 artanh(v_j)))``, ``u_k = -1 + (2 k + 1) / W_t``
    (arXiv 2102.02717)."""
    work, like = _prepare(images, "images", "(B, C, H, W)")
    _check_padding(padding_mode)
    size = (images.shape[-2], images.shape[-1])
    target = _pair(out_size, "out_size", (1, 1))
    centres, extent = _geometry(boxes, images.shape[0], size, like)
    dx, dy = _roi_offsets_cartesian(target, extent / 2)
    grid = _to_image(dx, dy, centres, _angles(angle, images.shape[0], like), size)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out.to(images.dtype)


def roi_tanh_restore(warped: Tensor, boxes: Tensor | Sequence[float], size: Sequence[int],
                     angle: float | Tensor = 0.0, padding_mode: str = "zeros") -> Tensor:
    """Inverse of :func:`roi_tanh_warp`: pixel ``p`` reads the warped map at ``tanh(Rot(-angle)(p - c) / (w/2, h/2))``
    (normalised, ``align_corners=False``); ``padding_mode`` for the half pixel past the outer samples."""
    work, like = _prepare(warped, "warped", "(B, C, H_t, W_t)")
    _check_padding(padding_mode)
    target = _pair(size, "size", (1, 1))
    centres, extent = _geometry(boxes, warped.shape[0], target, like)
    dx, dy = _from_image(target, centres, _angles(angle, warped.shape[0], like))
    half = extent / 2
    grid = torch.stack((torch.tanh(dx / half[:, 0, None, None]), torch.tanh(dy / half[:, 1, None, None])), dim=-1)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.to(warped.dtype)


def tanh_polar_to_tanh_cartesian(warped: Tensor, boxes: Tensor | Sequence[float], out_size: Sequence[int],
                                 keep_aspect_ratio: bool = False, padding_mode: str = "zeros") -> Tensor:
    """Resample a tanh-polar map ``(B, C, H_t, W_t)`` as the tanh-Cartesian map of the same RoI, ``out_size``.

    Composition of :func:`roi_tanh_polar_restore` and :func:`roi_tanh_warp` without the image in between (both
    frames rotate with the RoI, so the angle cancels); used by RTNet's hybrid block. Needs the boxes for their
    aspect ratio only (with ``keep_aspect_ratio=False`` the map does not depend on the box).
    """
    work, like = _prepare(warped, "warped", "(B, C, H_t, W_t)")
    target = _pair(out_size, "out_size", (1, 1))
    batch = warped.shape[0]
    extent = _box_extent(boxes, batch, like)
    dx, dy = _roi_offsets_cartesian(target, extent / 2)
    rho, phi = _polar_coordinates(dx, dy, extent / math.sqrt(math.pi), keep_aspect_ratio)
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    return _sample_polar(work, rho, phi, padding_mode).to(warped.dtype)


def tanh_cartesian_to_tanh_polar(warped: Tensor, boxes: Tensor | Sequence[float], out_size: Sequence[int],
                                 keep_aspect_ratio: bool = False, padding_mode: str = "zeros") -> Tensor:
    """Resample a tanh-Cartesian map ``(B, C, H_t, W_t)`` as the tanh-polar map of the same RoI, ``out_size``
    (the inverse of :func:`tanh_polar_to_tanh_cartesian`)."""
    work, like = _prepare(warped, "warped", "(B, C, H_t, W_t)")
    _check_padding(padding_mode)
    target = _pair(out_size, "out_size", (1, 1))
    extent = _box_extent(boxes, warped.shape[0], like)
    dx, dy = _roi_offsets_polar(target, extent / math.sqrt(math.pi), keep_aspect_ratio)
    half = extent / 2
    grid = torch.stack((torch.tanh(dx / half[:, 0, None, None]), torch.tanh(dy / half[:, 1, None, None])), dim=-1)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.to(warped.dtype)


def _box_extent(boxes: Tensor | Sequence[float], batch: int, like: Tensor) -> Tensor:
    """``(w, h)`` of the boxes, ``(B, 2)``; only ``x1 < x2`` and ``y1 < y2`` are required (no image here)."""
    b = _boxes(boxes, batch, None, like)
    return b[:, 2:] - b[:, :2]


def restore_probabilities(probs: Tensor, restore: Callable[..., Tensor], *args: object, background: int = 0,
                          **kwargs: object) -> Tensor:
    """Restore per-class probabilities ``(B, K, H_t, W_t)`` so that pixels outside the warp read as background.

    ``restore(x, *args, **kwargs)`` is :func:`roi_tanh_polar_restore` or :func:`roi_tanh_restore` (zero padding).
    The background channel is flipped to ``1 - p`` before and after the restore: where the restore pads with 0
    the result is ``p_background = 1`` and ``p_other = 0`` (RTNet's face parser).
    """
    _check_map(probs, "probs", "(B, K, H_t, W_t)")
    classes = probs.shape[1]
    if isinstance(background, bool) or not isinstance(background, int) or not -classes <= background < classes:
        raise ValueError(f"background must be a channel index in [0, {classes}), got {background!r}")
    flip = torch.zeros(classes, dtype=torch.bool, device=probs.device)
    flip[background] = True
    flip = flip[None, :, None, None]
    flipped = torch.where(flip, 1 - probs, probs)
    restored = restore(flipped, *args, **kwargs)
    return torch.where(flip, 1 - restored, restored)
