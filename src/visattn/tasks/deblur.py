"""Image deblurring with the Radial Strip Transformer: blur generator, loss, metrics and a small training entry.

Paper: Chen et al., "Spread Your Wings: A Radial Strip Transformer for Image Deblurring", arXiv 2404.00358 (network:
:class:`visattn.models.rst.RadialStripTransformer`).

Blur (any image ``(B, C, H, W)`` in ``[0, 1]``, seeded by a ``torch.Generator``):

- linear motion blur: convolution with a line kernel of length ``L`` pixels at angle ``a`` (the segment
  ``t (cos a, -sin a)``, ``|t| <= L / 2``, splatted bilinearly at sub-pixel steps and normalised to sum 1), edges
  replicated;
- rotational blur (camera roll): the mean of the image rotated about a centre ``c`` by ``n`` angles evenly spread
  over ``[-phi / 2, phi / 2]``, ``out(p) = mean_k I(c + Rot(theta_k)(p - c))`` (bilinear, edges replicated).

:func:`random_blur` draws per image: motion, rotation or both, lengths, angles and centres.

Loss (the release's ``options/train/GoPro.yml``): ``L1(out, gt) + 0.1 L1(rfft2(out), rfft2(gt))`` with the real and
imaginary parts compared as pairs (:func:`deblur_loss`). Metrics: PSNR and SSIM from scikit-image
(``skimage.metrics``, ``data_range=1``), per image and averaged.

Training data: random crops of scikit-image's bundled sample images (:func:`sample_images`) with texture (pixel
standard deviation at least :data:`TEXTURE_STD`; flat crops are drawn again), flipped and transposed at random,
blurred on the fly; the evaluation uses crops of held-out images (:data:`TEST_IMAGES`) drawn and blurred the same
way. Optimiser as released: AdamW (lr 1e-3, weight decay 1e-3, betas 0.9/0.9), gradient norm clipped to 0.01,
cosine schedule, no warm-up. ``python -m visattn.tasks.deblur --steps 300`` trains a small RST on CPU (output
convolution started at zero and a 20-step warm-up: two deviations for short runs, see :func:`train_deblur`) and
logs PSNR/SSIM of the blurred inputs and the restorations.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TEST_IMAGES",
    "TEXTURE_STD",
    "TRAIN_IMAGES",
    "DeblurReport",
    "deblur_loss",
    "deblur_pairs",
    "evaluate_deblur",
    "linear_motion_blur",
    "main",
    "motion_blur_kernel",
    "psnr",
    "random_blur",
    "random_crops",
    "restore",
    "rotational_blur",
    "sample_images",
    "ssim",
    "train_deblur",
]

log = logging.getLogger(__name__)

TRAIN_IMAGES = ("astronaut", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "brick", "grass",
                "gravel", "moon")
"""scikit-image sample images (bundled with the package, no download) used for training crops."""
TEST_IMAGES = ("coffee", "camera", "coins")
"""Held-out scikit-image sample images for evaluation."""


def _check_images(images: object, name: str = "images") -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"{name} must be a floating (B, C, H, W) tensor, got shape {tuple(images.shape)} "
                         f"and dtype {images.dtype}")
    return images


def _per_image(value: float | Tensor, batch: int, name: str, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        value = value.to(device=like.device, dtype=like.dtype)
        if value.dim() == 0:
            value = value.expand(batch)
        if value.shape != (batch,):
            raise ValueError(f"{name} must be a number or shaped (B,) = ({batch},), got {tuple(value.shape)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number or a (B,) tensor, got {value!r}")
    return like.new_full((batch,), float(value))


def motion_blur_kernel(length: Tensor, angle: Tensor, size: int, supersample: int = 8) -> Tensor:
    """Line kernels ``(B, size, size)`` summing to 1: the segment of ``length`` pixels through the centre at
    ``angle`` radians (counter-clockwise on screen), splatted bilinearly at ``supersample`` points per pixel.
    ``length`` and ``angle`` are ``(B,)``; ``length`` 0 gives the identity kernel."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd int, got {size!r}")
    if bool((length > size - 1).any()) if length.device.type == "cpu" else False:
        raise ValueError(f"length must be <= size - 1 = {size - 1}, got {length.tolist()}")
    steps = max(2, (size - 1) * supersample + 1)
    t = torch.linspace(-0.5, 0.5, steps, device=length.device, dtype=length.dtype)[None, :] * length[:, None]
    half = size // 2
    x = half + t * torch.cos(angle)[:, None]
    y = half - t * torch.sin(angle)[:, None]
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    kernel = length.new_zeros(length.shape[0], size * size)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).long().clamp(0, size - 1), (y0 + dy).long().clamp(0, size - 1)
        kernel = kernel.scatter_add(1, yi * size + xi, w)
    kernel = kernel.reshape(-1, size, size)
    return kernel / kernel.sum(dim=(1, 2), keepdim=True)


def linear_motion_blur(images: Tensor, length: float | Tensor, angle: float | Tensor) -> Tensor:
    """Blur each image with a line kernel of ``length`` pixels at ``angle`` radians (numbers or ``(B,)``)."""
    images = _check_images(images)
    batch, channels, height, width = images.shape
    length = _per_image(length, batch, "length", images)
    angle = _per_image(angle, batch, "angle", images)
    if length.device.type == "cpu" and bool((length < 0).any()):
        raise ValueError(f"length must be >= 0, got {length.tolist()}")
    longest = int(math.ceil(float(length.max()))) if length.device.type == "cpu" else min(height, width) - 1
    size = 2 * (longest // 2) + 3
    if size // 2 >= min(height, width):
        raise ValueError(f"length must be shorter than the image (shape {tuple(images.shape)}), got at most "
                         f"{longest}")
    kernels = motion_blur_kernel(length, angle, size).to(images.dtype)
    weight = kernels.repeat_interleave(channels, dim=0)[:, None]
    padded = F.pad(images.reshape(1, batch * channels, height, width), (size // 2,) * 4, mode="replicate")
    return F.conv2d(padded, weight, groups=batch * channels).reshape(batch, channels, height, width)


def rotational_blur(images: Tensor, angle: float | Tensor, center: Tensor | None = None, steps: int = 15) -> Tensor:
    """Mean of each image rotated about ``center`` (``(B, 2)`` as (row, column) pixels; default the middle) by
    ``steps`` angles evenly spread over ``[-angle / 2, angle / 2]`` radians (bilinear, edges replicated)."""
    images = _check_images(images)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    batch, _, height, width = images.shape
    angle = _per_image(angle, batch, "angle", images)
    if center is None:
        center = images.new_tensor([(height - 1) / 2, (width - 1) / 2]).expand(batch, 2)
    elif not isinstance(center, Tensor) or center.shape != (batch, 2):
        raise ValueError(f"center must be a (B, 2) = ({batch}, 2) tensor of (row, column), got "
                         f"{getattr(center, 'shape', center)!r}")
    center = center.to(device=images.device, dtype=images.dtype)
    fractions = torch.linspace(-0.5, 0.5, steps, device=images.device, dtype=images.dtype) if steps > 1 else (
        images.new_zeros(1))
    thetas = angle[:, None] * fractions[None, :]
    py = torch.arange(height, device=images.device, dtype=images.dtype)[:, None].expand(height, width)
    px = torch.arange(width, device=images.device, dtype=images.dtype)[None, :].expand(height, width)
    dy = py[None, None] - center[:, 0, None, None, None]
    dx = px[None, None] - center[:, 1, None, None, None]
    cos, sin = torch.cos(thetas)[..., None, None], torch.sin(thetas)[..., None, None]
    sx = center[:, 1, None, None, None] + cos * dx - sin * dy
    sy = center[:, 0, None, None, None] + sin * dx + cos * dy
    grid = torch.stack((2 * sx / max(width - 1, 1) - 1, 2 * sy / max(height - 1, 1) - 1), dim=-1)
    repeated = images.repeat_interleave(grid.shape[1], dim=0)
    sampled = F.grid_sample(repeated, grid.reshape(-1, height, width, 2), mode="bilinear", padding_mode="border",
                            align_corners=True)
    return sampled.reshape(batch, -1, *images.shape[1:]).mean(dim=1)


def random_blur(images: Tensor, generator: torch.Generator, max_length: float = 15.0,
                max_rotation: float = math.radians(12.0), kinds: Sequence[str] = ("motion", "rotation", "both")
                ) -> Tensor:
    """Blur each image with a kind drawn from ``kinds``: linear motion (length uniform in
    ``[max_length / 2, max_length]``, angle uniform), rotation (angle uniform in ``[max_rotation / 2, max_rotation]``,
    either sense, centre uniform over the middle half of the image) or both. ``generator`` (a CPU
    ``torch.Generator``) makes it reproducible."""
    images = _check_images(images)
    allowed = ("motion", "rotation", "both")
    if not kinds or any(k not in allowed for k in kinds):
        raise ValueError(f"kinds must be a non-empty sequence of {allowed}, got {kinds!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    batch, _, height, width = images.shape
    pick = torch.randint(len(kinds), (batch,), generator=generator).tolist()
    length = max_length * (0.5 + 0.5 * torch.rand(batch, generator=generator, dtype=torch.float64))
    direction = math.pi * torch.rand(batch, generator=generator, dtype=torch.float64)
    rotation = max_rotation * (0.5 + 0.5 * torch.rand(batch, generator=generator, dtype=torch.float64))
    rotation = rotation * torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
    centre = torch.rand(batch, 2, generator=generator, dtype=torch.float64) * 0.5 + 0.25
    centre = centre * torch.tensor([height - 1, width - 1], dtype=torch.float64)
    motion = torch.tensor([kinds[i] in ("motion", "both") for i in pick])
    rotate = torch.tensor([kinds[i] in ("rotation", "both") for i in pick])
    out = images
    out = rotational_blur(out, torch.where(rotate, rotation, 0.0).to(images), centre.to(images))
    return linear_motion_blur(out, torch.where(motion, length, 0.0).to(images), direction.to(images))


def sample_images(names: Sequence[str] = TRAIN_IMAGES) -> list[Tensor]:
    """scikit-image's bundled sample images as float ``(3, H, W)`` tensors in ``[0, 1]`` (grey images repeated over
    RGB, alpha dropped)."""
    import numpy as np
    from skimage import data, img_as_float

    out = []
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            raise ValueError(f"names must be scikit-image sample images (skimage.data), got {name!r}")
        image = img_as_float(loader())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        out.append(torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float())
    return out


def random_crops(images: Sequence[Tensor], count: int, size: int, generator: torch.Generator,
                 min_std: float = 0.0, max_tries: int = 100) -> Tensor:
    """``count`` random ``size x size`` crops ``(count, 3, size, size)`` of ``images``, each transformed by a random
    element of the square's symmetry group (horizontal flip, vertical flip and transpose, each with probability
    1/2: the release's ``use_flip`` and ``use_rot`` augmentation). Crops whose pixel standard deviation is below
    ``min_std`` (flat background, which no blur degrades) are drawn again, at most ``max_tries`` times each."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    smallest = min(min(im.shape[-2:]) for im in images)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= smallest:
        raise ValueError(f"size must be an int in [1, {smallest}] (the smallest image side), got {size!r}")
    if isinstance(min_std, bool) or not isinstance(min_std, (int, float)) or not 0 <= min_std < 1:
        raise ValueError(f"min_std must be a number in [0, 1), got {min_std!r}")
    if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
        raise ValueError(f"max_tries must be a positive int, got {max_tries!r}")
    crops = []
    for _ in range(count):
        for _ in range(max_tries):
            image = images[int(torch.randint(len(images), (1,), generator=generator))]
            top = int(torch.randint(image.shape[-2] - size + 1, (1,), generator=generator))
            left = int(torch.randint(image.shape[-1] - size + 1, (1,), generator=generator))
            crop = image[:, top:top + size, left:left + size]
            if min_std == 0 or float(crop.std()) >= min_std:
                break
        else:
            raise ValueError(f"min_std={min_std!r}: no crop of {max_tries} drawn had that much texture; lower min_std "
                             f"or use other images")
        flips = torch.rand(3, generator=generator) < 0.5
        if bool(flips[0]):
            crop = crop.flip(-1)
        if bool(flips[1]):
            crop = crop.flip(-2)
        if bool(flips[2]):
            crop = crop.transpose(-1, -2)
        crops.append(crop)
    return torch.stack(crops)


def deblur_pairs(images: Sequence[Tensor], count: int, size: int, generator: torch.Generator, min_std: float = 0.0,
                 **blur_kwargs: object) -> tuple[Tensor, Tensor]:
    """``(blurred, sharp)``, each ``(count, 3, size, size)``: :func:`random_crops` (with ``min_std``) and their
    :func:`random_blur` (``blur_kwargs``), clamped to ``[0, 1]``."""
    sharp = random_crops(images, count, size, generator, min_std)
    return random_blur(sharp, generator, **blur_kwargs).clamp(0, 1), sharp


def deblur_loss(pred: Tensor, target: Tensor, fft_weight: float = 0.1) -> Tensor:
    """RST's training loss (the release's L1 + FFT loss): ``mean|pred - target| + fft_weight mean|F(pred) -
    F(target)|``, ``F`` = ``rfft2`` over the last two axes with real and imaginary parts as separate entries."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    spectrum = torch.view_as_real(torch.fft.rfft2(pred - target))
    return F.l1_loss(pred, target) + fft_weight * spectrum.abs().mean()


def _numpy_images(x: Tensor):
    return x.detach().to("cpu", torch.float64).clamp(0, 1).numpy()


def psnr(pred: Tensor, target: Tensor) -> float:
    """Mean PSNR (dB) over the batch of images in ``[0, 1]`` (``skimage.metrics.peak_signal_noise_ratio``)."""
    from skimage.metrics import peak_signal_noise_ratio

    p, t = _numpy_images(_check_images(pred, "pred")), _numpy_images(_check_images(target, "target"))
    return float(sum(peak_signal_noise_ratio(ti, pi, data_range=1.0) for pi, ti in zip(p, t, strict=True)) / len(p))


def ssim(pred: Tensor, target: Tensor) -> float:
    """Mean SSIM over the batch (``skimage.metrics.structural_similarity``, channels first, ``data_range=1``)."""
    from skimage.metrics import structural_similarity

    p, t = _numpy_images(_check_images(pred, "pred")), _numpy_images(_check_images(target, "target"))
    return float(sum(structural_similarity(ti, pi, data_range=1.0, channel_axis=0)
                     for pi, ti in zip(p, t, strict=True)) / len(p))


@dataclass
class DeblurReport:
    """Training losses and held-out metrics of the blurred inputs and the model's restorations: before training
    (``psnr_untrained``), every ``eval_every`` steps (``history``: ``(step, psnr_restored)``) and at the end."""

    losses: list[float] = field(default_factory=list)
    psnr_blurred: float = float("nan")
    psnr_untrained: float = float("nan")
    psnr_restored: float = float("nan")
    ssim_blurred: float = float("nan")
    ssim_restored: float = float("nan")
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def gain(self) -> float:
        """Held-out PSNR of the restorations minus that of the blurred inputs (dB)."""
        return self.psnr_restored - self.psnr_blurred


@torch.no_grad()
def restore(model: nn.Module, blurred: Tensor, batch_size: int = 8) -> Tensor:
    """``model(blurred)`` in eval mode, ``batch_size`` images at a time, clamped to ``[0, 1]``."""
    was_training = model.training
    model.eval()
    restored = torch.cat([model(blurred[i:i + batch_size]) for i in range(0, len(blurred), batch_size)])
    model.train(was_training)
    return restored.clamp(0, 1)


def evaluate_deblur(model: nn.Module, blurred: Tensor, sharp: Tensor, batch_size: int = 8) -> dict[str, float]:
    """PSNR and SSIM of ``blurred`` and of ``model(blurred)`` (clamped to [0, 1]) against ``sharp``."""
    restored = restore(model, blurred, batch_size)
    return {"psnr_blurred": psnr(blurred, sharp), "psnr_restored": psnr(restored, sharp),
            "ssim_blurred": ssim(blurred, sharp), "ssim_restored": ssim(restored, sharp)}


TEXTURE_STD = 0.05
"""Default ``min_std`` of :func:`train_deblur`'s crops: flat crops (sky, the black of ``hubble_deep_field`` and
``coins``' background) are hardly changed by blur, and their near-infinite PSNR would dominate a mean over crops."""


def train_deblur(model: nn.Module, steps: int = 300, batch_size: int = 8, crop: int = 64, lr: float = 1e-3,
                 seed: int = 0, eval_count: int = 16, log_every: int = 50, fft_weight: float = 0.1,
                 grad_clip: float | None = 0.01, warmup_steps: int = 0, min_std: float = TEXTURE_STD,
                 eval_every: int = 0) -> DeblurReport:
    """Train ``model`` on freshly blurred crops of :data:`TRAIN_IMAGES` and evaluate it on ``eval_count`` blurred
    crops of the held-out :data:`TEST_IMAGES`, drawn and blurred the same way (with ``min_std``) by a generator of
    their own (``seed + 1``) before training starts.

    The release's recipe (``options/train/GoPro.yml`` and its ``ImageRestorationModel``): :func:`deblur_loss`
    (``fft_weight`` 0.1), AdamW (weight decay 1e-3, betas 0.9/0.9), gradients clipped to norm ``grad_clip`` = 0.01
    before every step, cosine schedule over ``steps`` with no warm-up; flip and rotation augmentation. The
    learning rate rises linearly over ``warmup_steps`` first when that is > 0 (not in the release). The schedule is
    :func:`visattn.train.trainer.warmup_cosine` (cosine to 0; the release stops at 1e-7). The shared
    :class:`visattn.train.trainer.Trainer` is not used: it trains classifiers (cross-entropy, accuracy) on a fixed
    ``(images, labels)`` set, while deblurring draws fresh pairs every step and has its own loss and metrics.

    For short runs, start ``model`` at the identity (RST: ``zero_init_output=True``) and warm up: see
    docs/tasks.md for what each part of the recipe is worth in a few hundred CPU steps."""
    from ..train.trainer import warmup_cosine

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps < steps:
        raise ValueError(f"warmup_steps must be an int in [0, steps={steps}), got {warmup_steps!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
    generator = torch.Generator().manual_seed(seed)
    train_images = sample_images(TRAIN_IMAGES)
    blurred, sharp = deblur_pairs(sample_images(TEST_IMAGES), eval_count, crop,
                                  torch.Generator().manual_seed(seed + 1), min_std)
    report = DeblurReport(psnr_blurred=psnr(blurred, sharp))
    report.psnr_untrained = psnr(restore(model, blurred), sharp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3, betas=(0.9, 0.9))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup_steps))
    model.train()
    for step in range(steps):
        inputs, targets = deblur_pairs(train_images, batch_size, crop, generator, min_std)
        loss = deblur_loss(model(inputs), targets, fft_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        report.losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log.info("step %d loss %.4f", step + 1, report.losses[-1])
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            report.history.append((step + 1, psnr(restore(model, blurred), sharp)))
    for key, value in evaluate_deblur(model, blurred, sharp).items():
        setattr(report, key, value)
    report.history.append((steps, report.psnr_restored))
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m visattn.tasks.deblur``: train a small RST on blurred sample-image crops, print the metrics."""
    parser = argparse.ArgumentParser(prog="python -m visattn.tasks.deblur", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--blocks", type=int, nargs=3, default=(1, 1, 1))
    parser.add_argument("--refinement", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=20, help="linear warm-up steps (the release has none: 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--release-init", action="store_true",
                        help="keep the release's initialisation of the output convolution instead of zero")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..models.rst import RadialStripTransformer

    torch.manual_seed(args.seed)
    model = RadialStripTransformer(dim=args.dim, num_blocks=tuple(args.blocks),
                                   num_refinement_blocks=args.refinement, img_size=args.crop,
                                   zero_init_output=not args.release_init)
    report = train_deblur(model, args.steps, args.batch_size, args.crop, args.lr, args.seed,
                          warmup_steps=args.warmup)
    first, last = report.losses[0], sum(report.losses[-10:]) / len(report.losses[-10:])
    log.info("loss %.4f -> %.4f (mean of the last 10) over %d steps", first, last, args.steps)
    log.info("held-out PSNR: blurred %.2f dB, restored %.2f dB (%+.2f dB)", report.psnr_blurred,
             report.psnr_restored, report.gain)
    log.info("held-out SSIM: blurred %.4f, restored %.4f", report.ssim_blurred, report.ssim_restored)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
