"""Learned image compression: the rate-distortion loss, bits per pixel, PSNR, a JPEG baseline, sample images, a
short training loop and checkpoints for the S2LIC codec (:mod:`visattn.models.s2lic`).

Paper: Wang et al., "S2LIC: Learned Image Compression with the SwinV2 Block, Adaptive Channel-wise and Global-inter
Attention Context" (arXiv 2403.14471). Objective (MSE models, CompressAI's convention the release follows):

    L = R + lambda * 255^2 * MSE(x, x_hat),     R = sum(-log2 p(y_hat)) + sum(-log2 p(z_hat)) over the pixels,

with ``lambda`` in :data:`LAMBDAS`. PSNR is scikit-image's ``peak_signal_noise_ratio`` on images in ``[0, 1]``;
the JPEG baseline is Pillow's encoder, its size the whole file (headers included), like the codec's whose size is
the whole bitstream file.

Training entry: ``python -m visattn.tasks.compression --steps 1000 --out s2lic.pt`` trains a small S2LIC
(:data:`TINY_CONFIG`, :data:`SHORT_RUN` recipe) on random crops of scikit-image's sample pictures and generated
textures and writes a checkpoint ``visattn codec`` reads.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LAMBDAS", "SHORT_RUN", "TINY_CONFIG", "TRAIN_IMAGES", "TEST_IMAGES", "CodecPoint", "JpegPoint",
           "bits_per_pixel", "compare_with_jpeg", "jpeg_bpp_at_psnr", "jpeg_curve", "jpeg_psnr_at_bpp",
           "jpeg_roundtrip", "learning_rate_at", "load_checkpoint", "model_fingerprint", "pack_stream", "psnr",
           "random_crops", "rate_distortion_loss", "sample_image", "save_checkpoint", "stream_bpp",
           "synthetic_texture", "train", "training_pictures", "unpack_stream"]

logger = logging.getLogger(__name__)

LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483)
"""Rate-distortion trade-offs for MSE models: CompressAI's and MLIC's set (arXiv 2211.07273), the framework the
S2LIC release builds on. The S2LIC paper's own list could not be read here."""

TINY_CONFIG: dict[str, Any] = dict(N=32, M=40, num_slices=5, depths=(1, 1, 1), num_heads=(2, 2, 2),
                                   enhancement_channels=8, img_size=64, drop_path_rate=0.0)
"""A small S2LIC that trains on two CPU cores (about 1 M parameters)."""

TRAIN_IMAGES = ("chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel", "camera",
                "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text")
"""scikit-image sample pictures the training entry crops from: every colour picture the installed scikit-image
ships without a download except the held-out ones (``cat`` is ``chelsea`` again, ``logo`` has an alpha channel) and
the grey pictures (repeated on the three channels by :func:`sample_image`)."""

TEST_IMAGES = ("astronaut", "coffee")
"""scikit-image sample pictures held out from training, for evaluation."""

MAGIC = b"S2LC"
"""First bytes of a bitstream file written by :func:`pack_stream`."""

_HEADER = struct.Struct(">4sBHHHHII")
"""magic, format version, image height and width, hyper-latent height and width, model fingerprint, length of the
y string."""


def rate_distortion_loss(output: Mapping[str, Any], target: Tensor, lmbda: float) -> dict[str, Tensor]:
    """``{"loss", "bpp", "mse"}`` with ``loss = bpp + lmbda * 255^2 * mse`` (CompressAI's RateDistortionLoss).

    ``output``: the codec's ``forward`` result (``x_hat`` and a ``likelihoods`` mapping); ``target``: the images
    ``(B, 3, H, W)`` in ``[0, 1]``.
    """
    if not isinstance(lmbda, (int, float)) or isinstance(lmbda, bool) or not lmbda > 0:
        raise ValueError(f"lmbda must be a positive number, got {lmbda!r}")
    if not isinstance(target, Tensor) or target.dim() != 4:
        raise ValueError(f"target must be an image batch (B, C, H, W), got "
                         f"{tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__}")
    if output["x_hat"].shape != target.shape:
        raise ValueError(f"x_hat {tuple(output['x_hat'].shape)} and target {tuple(target.shape)} differ in shape")
    b, _, h, w = target.shape
    bpp = bits_per_pixel(output["likelihoods"], b * h * w)
    mse = F.mse_loss(output["x_hat"], target)
    return {"loss": bpp + lmbda * 255 ** 2 * mse, "bpp": bpp, "mse": mse}


def bits_per_pixel(likelihoods: Mapping[str, Tensor] | Iterable[Tensor], num_pixels: int) -> Tensor:
    """The entropy estimate ``sum(-log2 p) / num_pixels`` over every likelihood tensor."""
    values = likelihoods.values() if isinstance(likelihoods, Mapping) else likelihoods
    return sum(-torch.log2(p).sum() for p in values) / num_pixels


def stream_bpp(strings: Sequence[Sequence[bytes]], num_pixels: int, header_bytes: int = 0) -> float:
    """Bits per pixel of coded strings (``compress``'s ``[y_strings, z_strings]``) plus ``header_bytes``."""
    return 8 * (sum(len(s) for group in strings for s in group) + header_bytes) / num_pixels


def model_fingerprint(model: torch.nn.Module) -> int:
    """CRC-32 of every tensor of ``model``'s state dict (names, shapes and bytes, in order): a bitstream records
    the fingerprint of the model that wrote it, so that decoding with other weights is refused."""
    crc = 0
    for name, tensor in model.state_dict().items():
        crc = zlib.crc32(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode(), crc)
        crc = zlib.crc32(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(), crc)
    return crc


def pack_stream(strings: Sequence[Sequence[bytes]], shape: Sequence[int], image_size: Sequence[int],
                fingerprint: int = 0) -> bytes:
    """One image's coded strings as a file: a 21-byte header (magic ``S2LC``, version 1, the image's height and
    width before padding, the hyper-latent's height and width, the model's :func:`model_fingerprint`, the y
    string's length), the y string, the z string."""
    (y_string,), (z_string,) = strings
    return _HEADER.pack(MAGIC, 1, *image_size, *shape, fingerprint, len(y_string)) + y_string + z_string


def unpack_stream(data: bytes) -> tuple[list[list[bytes]], tuple[int, int], tuple[int, int], int]:
    """Inverse of :func:`pack_stream`: ``(strings, hyper-latent shape, image size, model fingerprint)``;
    ``ValueError`` when ``data`` is not such a file."""
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise ValueError("the input is not an S2LIC bitstream (it does not start with the S2LC header)")
    _, version, h, w, zh, zw, fingerprint, y_length = _HEADER.unpack_from(data)
    if version != 1 or len(data) < _HEADER.size + y_length:
        raise ValueError(f"the S2LIC bitstream is truncated or of an unknown version ({version})")
    y_string = data[_HEADER.size:_HEADER.size + y_length]
    z_string = data[_HEADER.size + y_length:]
    return [[y_string], [z_string]], (zh, zw), (h, w), fingerprint


def psnr(reference: Tensor | np.ndarray, test: Tensor | np.ndarray) -> float:
    """PSNR in dB of ``test`` against ``reference``, both in ``[0, 1]`` (``test`` clipped), channels first or last:
    scikit-image's ``peak_signal_noise_ratio`` with ``data_range=1``, in float64."""
    from skimage.metrics import peak_signal_noise_ratio

    ref = reference.detach().cpu().double().numpy() if isinstance(reference, Tensor) else np.asarray(reference,
                                                                                                     np.float64)
    out = test.detach().cpu().double().numpy() if isinstance(test, Tensor) else np.asarray(test, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"reference {ref.shape} and test {out.shape} differ in shape")
    return float(peak_signal_noise_ratio(ref, np.clip(out, 0.0, 1.0), data_range=1.0))


def to_uint8(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` in ``[0, 1]`` -> ``(H, W, 3)`` uint8 (rounded, clipped)."""
    return (image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def to_tensor(pixels: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in ``[0, 1]``."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be an (H, W, 3) uint8 RGB array, got {pixels.shape} {pixels.dtype}")
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255


@dataclass(frozen=True)
class JpegPoint:
    """One JPEG encoding: Pillow ``quality``, bits per pixel of the whole file, PSNR of the decoded image."""

    quality: int
    bpp: float
    psnr: float


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """Encode ``(H, W, 3)`` uint8 ``pixels`` with Pillow's JPEG at ``quality`` (optimised Huffman tables, 4:2:0) and
    decode it: ``(file bytes, decoded pixels)``."""
    from PIL import Image

    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ValueError(f"quality must be an int in [1, 95], got {quality!r}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, optimize=True)
    data = buffer.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return data, decoded


def jpeg_curve(pixels: np.ndarray, qualities: Iterable[int] = range(1, 96)) -> list[JpegPoint]:
    """JPEG's rate-distortion curve on ``pixels``: one :class:`JpegPoint` per quality, sorted by bpp."""
    h, w = pixels.shape[:2]
    reference = pixels.astype(np.float64) / 255
    points = []
    for quality in qualities:
        data, decoded = jpeg_roundtrip(pixels, quality)
        points.append(JpegPoint(quality, 8 * len(data) / (h * w), psnr(reference, decoded.astype(np.float64) / 255)))
    return sorted(points, key=lambda p: p.bpp)


def jpeg_psnr_at_bpp(curve: Sequence[JpegPoint], bpp: float) -> float:
    """JPEG's PSNR at ``bpp``, linearly interpolated between the two nearest qualities; NaN outside the curve
    (a rate JPEG cannot reach, e.g. below the size of its headers)."""
    rates = np.array([p.bpp for p in curve])
    if not len(curve) or bpp < rates[0] or bpp > rates[-1]:
        return math.nan
    return float(np.interp(bpp, rates, [p.psnr for p in curve]))


def jpeg_bpp_at_psnr(curve: Sequence[JpegPoint], target: float) -> float:
    """JPEG's smallest bpp for ``target`` dB, interpolated between the points of the curve that beat every smaller
    file's PSNR (the curve made monotone); NaN outside it."""
    record: list[JpegPoint] = []
    for point in curve:
        if not record or point.psnr > record[-1].psnr:
            record.append(point)
    if not record or target < record[0].psnr or target > record[-1].psnr:
        return math.nan
    return float(np.interp(target, [p.psnr for p in record], [p.bpp for p in record]))


@dataclass(frozen=True)
class CodecPoint:
    """One picture coded by the learned codec beside JPEG on the same pixels.

    ``bpp``: the whole bitstream file (:func:`pack_stream`, header included) in bits per pixel; ``estimate``: the
    entropy estimate of ``forward``; ``psnr``: the decoded 8-bit picture; ``jpeg_psnr``: JPEG's PSNR at ``bpp``
    (interpolated between qualities 1..95, NaN below JPEG's smallest file); ``jpeg_bpp``: JPEG's bpp at ``psnr``
    (NaN outside JPEG's range); ``jpeg_min_bpp``, ``jpeg_min_psnr``: JPEG's smallest file (quality 1) and its PSNR.
    """

    bpp: float
    estimate: float
    psnr: float
    jpeg_psnr: float
    jpeg_bpp: float
    jpeg_min_bpp: float
    jpeg_min_psnr: float

    @property
    def gain_db(self) -> float:
        """``psnr - jpeg_psnr`` (dB) at equal bpp; NaN where JPEG cannot reach the codec's rate."""
        return self.psnr - self.jpeg_psnr

    @property
    def dominates_jpeg_minimum(self) -> bool:
        """The codec's file is smaller than JPEG's smallest and its PSNR higher: better at every rate JPEG has."""
        return self.bpp <= self.jpeg_min_bpp and self.psnr > self.jpeg_min_psnr


def compare_with_jpeg(model: torch.nn.Module, pixels: np.ndarray,
                      qualities: Iterable[int] = range(1, 96)) -> CodecPoint:
    """Code ``pixels`` (``(H, W, 3)`` uint8) with ``model`` (an S2LIC in eval mode whose coders were updated) to a
    real bitstream file and back, and set the result beside JPEG's curve on the same pixels (:class:`CodecPoint`).
    Pictures whose sides are not multiples of 64 are padded and cropped back, as ``visattn codec`` does."""
    from ..models.s2lic import pad_to_multiple

    h, w = pixels.shape[:2]
    x = pad_to_multiple(to_tensor(pixels)[None])
    with torch.no_grad():
        estimate = float(bits_per_pixel(model(x)["likelihoods"], h * w))
    coded = model.compress(x)
    data = pack_stream(coded["strings"], coded["shape"], (h, w), model_fingerprint(model))
    strings, shape, _, _ = unpack_stream(data)
    x_hat = model.decompress(strings, shape)["x_hat"][0, :, :h, :w]
    bpp = 8 * len(data) / (h * w)
    quality = psnr(pixels.astype(np.float64) / 255, to_uint8(x_hat).astype(np.float64) / 255)
    curve = jpeg_curve(pixels, qualities)
    smallest = curve[0]
    return CodecPoint(bpp, estimate, quality, jpeg_psnr_at_bpp(curve, bpp), jpeg_bpp_at_psnr(curve, quality),
                      smallest.bpp, smallest.psnr)


def sample_image(name: str, size: int | None = None) -> Tensor:
    """scikit-image's sample picture ``name`` as ``(3, H, W)`` in ``[0, 1]`` (a grey picture repeated on the three
    channels); with ``size``, the centre square of the picture resized (area) to ``size x size``."""
    from skimage import data

    loader = getattr(data, name, None)
    if loader is None:
        raise ValueError(f"name must be a scikit-image sample picture (skimage.data), got {name!r}")
    pixels = np.asarray(loader())
    if pixels.ndim == 2 and pixels.dtype == np.uint8:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    image = to_tensor(pixels)
    if size is not None:
        h, w = image.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = image[:, top:top + side, left:left + side][None]
        image = F.interpolate(square, size=(size, size), mode="area")[0]
    return image


def synthetic_texture(size: int, generator: torch.Generator) -> Tensor:
    """A generated ``(3, size, size)`` picture in ``[0, 1]`` for training: a smooth colour gradient, two to four
    coloured sinusoidal gratings at random orientations and frequencies, and a few flat-coloured discs (sharp
    edges), the kind of structure natural pictures mix."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    axis = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    image = uniform(3, 1, 1, low=0.2, high=0.8) + uniform(3, 1, 1, low=-0.3, high=0.3) * xx \
        + uniform(3, 1, 1, low=-0.3, high=0.3) * yy
    for _ in range(int(torch.randint(2, 5, (1,), generator=generator))):
        angle, frequency, phase = uniform(1, high=math.pi), uniform(1, low=2.0, high=40.0), uniform(1, high=6.3)
        wave = torch.sin(frequency * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
        image = image + uniform(3, 1, 1, low=-0.15, high=0.15) * wave
    for _ in range(int(torch.randint(1, 6, (1,), generator=generator))):
        cy, cx, radius = uniform(1, low=-1.0, high=1.0), uniform(1, low=-1.0, high=1.0), uniform(1, low=0.05, high=0.5)
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius ** 2
        image = torch.where(inside, uniform(3, 1, 1), image)
    return image.clamp(0, 1)


def training_pictures(names: Sequence[str] = TRAIN_IMAGES, textures: int = 8, texture_size: int = 256,
                      seed: int = 0) -> list[Tensor]:
    """The training set of the short-run recipe: scikit-image's pictures ``names`` at full size and ``textures``
    :func:`synthetic_texture` pictures of ``texture_size`` pixels."""
    generator = torch.Generator().manual_seed(seed)
    return [sample_image(name) for name in names] + [synthetic_texture(texture_size, generator)
                                                     for _ in range(textures)]


def random_crops(images: Sequence[Tensor], count: int, size: int, generator: torch.Generator,
                 min_scale: float = 1.0) -> Tensor:
    """``(count, 3, size, size)`` random crops of random ``images``: each a square of side ``size / s`` (``s``
    uniform in ``[min_scale, 1]``, at most the picture's shorter side) resized (area) to ``size``, flipped
    left-right and upside-down each with probability 1/2. ``min_scale < 1`` shows the codec the pictures at several
    scales, as a picture resized to a smaller size looks."""
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale!r}")
    crops = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = image.shape[-2:]
        scale = min_scale + (1 - min_scale) * float(torch.rand((), generator=generator))
        side = max(size, min(round(size / scale), h, w))
        top = int(torch.randint(h - side + 1, (1,), generator=generator))
        left = int(torch.randint(w - side + 1, (1,), generator=generator))
        crop = image[:, top:top + side, left:left + side]
        if side != size:
            crop = F.interpolate(crop[None], size=(size, size), mode="area")[0]
        for dim in (-1, -2):
            if bool(torch.rand((), generator=generator) < 0.5):
                crop = crop.flip(dim)
        crops.append(crop)
    return torch.stack(crops)


def learning_rate_at(step: int, steps: int, lr: float, warmup: int = 0, decay_at: float = 1.0,
                     decay: float = 0.1, time_fraction: float = 0.0) -> float:
    """The learning rate of step ``step`` of ``steps``: linear warm-up from ``lr / warmup`` over the first
    ``warmup`` steps, ``lr``, then ``lr * decay`` from step ``decay_at * steps`` on (the one-step drop
    CompressAI-style training ends with), or from the moment ``time_fraction`` (the share of a wall-clock limit
    spent so far) reaches ``decay_at``, so that a run that the clock stops also ends at the lower rate."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * decay if step >= decay_at * steps or time_fraction >= decay_at else lr


def train(model: torch.nn.Module, images: Sequence[Tensor], steps: int, lmbda: float = 0.0130, crop: int = 64,
          batch: int = 4, lr: float = 1e-4, aux_lr: float = 1e-3, seed: int = 0, log_every: int = 0,
          warmup: int = 0, decay_at: float = 1.0, min_scale: float = 1.0, clip: float = 1.0,
          max_seconds: float | None = None) -> list[float]:
    """Train ``model`` (an S2LIC) for ``steps`` Adam steps on :func:`random_crops` of ``images`` (``(3, H, W)``
    tensors in ``[0, 1]``), minimising :func:`rate_distortion_loss`; the bottleneck's quantiles follow their own
    loss (``model.aux_loss()``) with a second Adam at ``aux_lr``, as in CompressAI. The learning rate follows
    :func:`learning_rate_at` (``warmup``, ``decay_at``, of the steps or of ``max_seconds``, whichever comes first);
    gradients are clipped to norm ``clip`` (0: not clipped); ``max_seconds`` stops early (wall clock). Returns the
    losses. Call ``model.update()`` before coding.

    The published models train at ``lr = 1e-4`` for millions of steps; the short CPU runs of
    ``benchmarks/s2lic_vs_jpeg.py`` use a higher rate (docs/tasks.md gives the measured effect)."""
    import time

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not images or any(img.shape[-1] < crop or img.shape[-2] < crop for img in images):
        raise ValueError(f"images must be a non-empty list of pictures at least crop={crop} pixels on each side")
    generator = torch.Generator().manual_seed(seed)
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main, lr=lr)
    aux_optimizer = torch.optim.Adam(aux, lr=aux_lr)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            elapsed = 0.0 if not max_seconds else (time.perf_counter() - start) / max_seconds
            group["lr"] = learning_rate_at(step, steps, lr, warmup, decay_at, time_fraction=elapsed)
        x = random_crops(images, batch, crop, generator, min_scale)
        terms = rate_distortion_loss(model(x), x, lmbda)
        optimizer.zero_grad()
        terms["loss"].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(main, clip)
        optimizer.step()
        aux_loss = model.aux_loss()
        aux_optimizer.zero_grad()
        aux_loss.backward()
        aux_optimizer.step()
        losses.append(float(terms["loss"].detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            logger.info("step %d: loss %.4f, bpp %.4f, mse %.6f, aux %.2f, %.0f s", step, losses[-1],
                        float(terms["bpp"].detach()), float(terms["mse"].detach()), float(aux_loss.detach()),
                        time.perf_counter() - start)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            logger.info("stopped after %d steps: %.0f s > max_seconds", step + 1, time.perf_counter() - start)
            break
    return losses


def save_checkpoint(model: torch.nn.Module, path: str | Path, **extra: Any) -> None:
    """Write ``model`` (an S2LIC whose coders were updated) with its constructor arguments, so that
    :func:`load_checkpoint` and ``visattn codec`` rebuild it; ``extra`` (e.g. ``lmbda``) is stored beside."""
    model.update()
    torch.save({"kind": "visattn.s2lic", "config": dict(model.config), "state_dict": model.state_dict(),
                **extra}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """An S2LIC in eval mode from :func:`save_checkpoint`'s file (its CDF tables included, so that encoder and
    decoder code with the same tables). ``ValueError`` when the file is not such a checkpoint."""
    from ..models.s2lic import S2LIC

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"checkpoint {str(path)!r} could not be read as a torch file: {err}") from err
    if not isinstance(payload, dict) or payload.get("kind") != "visattn.s2lic":
        raise ValueError(f"checkpoint {str(path)!r} is not an S2LIC checkpoint written by "
                         "visattn.tasks.compression.save_checkpoint")
    model = S2LIC(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


SHORT_RUN = dict(lmbda=0.0035, crop=128, batch=4, lr=1e-3, warmup=20, decay_at=0.85, min_scale=0.5)
"""The short CPU recipe of ``benchmarks/s2lic_vs_jpeg.py`` and of the training entry (docs/tasks.md): a learning
rate ten times the published 1e-4 with a warm-up and a 10x drop for the last 15% of the steps, 128-pixel crops at
scales 0.5-1 of :func:`training_pictures`."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m visattn.tasks.compression``: train a small S2LIC on scikit-image's pictures and generated
    textures (:data:`SHORT_RUN` recipe), save a checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m visattn.tasks.compression", description=main.__doc__)
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (default 1000)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much training wall clock")
    parser.add_argument("--lmbda", type=float, default=SHORT_RUN["lmbda"], help="rate-distortion trade-off")
    parser.add_argument("--crop", type=int, default=SHORT_RUN["crop"], help="training crop side, a multiple of 64")
    parser.add_argument("--batch", type=int, default=SHORT_RUN["batch"], help="crops per step")
    parser.add_argument("--lr", type=float, default=SHORT_RUN["lr"], help="peak learning rate")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..models.s2lic import S2LIC

    torch.manual_seed(0)
    model = S2LIC(**TINY_CONFIG)
    recipe = dict(SHORT_RUN, lmbda=args.lmbda, crop=args.crop, batch=args.batch, lr=args.lr)
    losses = train(model, training_pictures(), args.steps, log_every=25,
                   max_seconds=None if args.minutes is None else 60 * args.minutes, **recipe)
    save_checkpoint(model.eval(), args.out, lmbda=args.lmbda, steps=len(losses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
