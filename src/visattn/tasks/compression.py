"""Learned image compression: the rate-distortion loss, bits per pixel, PSNR, a JPEG baseline, sample images, a
short training loop and checkpoints for the S2LIC codec (:mod:`visattn.models.s2lic`).

Paper: Wang et al., "S2LIC: Learned Image Compression with the SwinV2 Block, Adaptive Channel-wise and Global-inter
Attention Context" (arXiv 2403.14471). Objective (MSE models, CompressAI's convention the release follows):

    L = R + lambda * 255^2 * MSE(x, x_hat),     R = sum(-log2 p(y_hat)) + sum(-log2 p(z_hat)) over the pixels,

with ``lambda`` in :data:`LAMBDAS`. PSNR is scikit-image's ``peak_signal_noise_ratio`` on images in ``[0, 1]``;
the JPEG baseline is Pillow's encoder, its size the whole file (headers included), like the codec's whose size is
the whole bitstream file.

Training entry: ``python -m visattn.tasks.compression --steps 300 --out s2lic.pt`` trains a small S2LIC on random
crops of scikit-image's sample pictures and writes a checkpoint ``visattn codec`` reads.
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

__all__ = ["LAMBDAS", "TINY_CONFIG", "TRAIN_IMAGES", "TEST_IMAGES", "JpegPoint", "bits_per_pixel", "jpeg_curve",
           "jpeg_psnr_at_bpp", "jpeg_roundtrip", "load_checkpoint", "model_fingerprint", "pack_stream", "psnr",
           "rate_distortion_loss", "sample_image", "save_checkpoint", "stream_bpp", "train", "unpack_stream"]

logger = logging.getLogger(__name__)

LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483)
"""Rate-distortion trade-offs for MSE models: CompressAI's and MLIC's set (arXiv 2211.07273), the framework the
S2LIC release builds on. The S2LIC paper's own list could not be read here."""

TINY_CONFIG: dict[str, Any] = dict(N=32, M=40, num_slices=5, depths=(1, 1, 1), num_heads=(2, 2, 2),
                                   enhancement_channels=8, img_size=64, drop_path_rate=0.0)
"""A small S2LIC that trains on two CPU cores (about 1 M parameters)."""

TRAIN_IMAGES = ("chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
"""scikit-image sample pictures the training entry crops from."""

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


def sample_image(name: str, size: int | None = None) -> Tensor:
    """scikit-image's sample picture ``name`` as ``(3, H, W)`` in ``[0, 1]``; with ``size``, the centre square of
    the picture resized (area) to ``size x size``."""
    from skimage import data

    loader = getattr(data, name, None)
    if loader is None:
        raise ValueError(f"name must be a scikit-image sample picture (skimage.data), got {name!r}")
    image = to_tensor(np.asarray(loader()))
    if size is not None:
        h, w = image.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = image[:, top:top + side, left:left + side][None]
        image = F.interpolate(square, size=(size, size), mode="area")[0]
    return image


def _random_crops(images: Sequence[Tensor], count: int, size: int, generator: torch.Generator) -> Tensor:
    crops = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = image.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crop = image[:, top:top + size, left:left + size]
        if bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops)


def train(model: torch.nn.Module, images: Sequence[Tensor], steps: int, lmbda: float = 0.0130, crop: int = 64,
          batch: int = 4, lr: float = 1e-4, aux_lr: float = 1e-3, seed: int = 0,
          log_every: int = 0) -> list[float]:
    """Train ``model`` (an S2LIC) for ``steps`` Adam steps on random ``crop``-pixel crops of ``images``
    (``(3, H, W)`` tensors in ``[0, 1]``), minimising :func:`rate_distortion_loss`; the bottleneck's quantiles
    follow their own loss (``model.aux_loss()``) with a second Adam, as in CompressAI. Gradients are clipped to
    norm 1. Returns the losses. Call ``model.update()`` before coding."""
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
    losses = []
    for step in range(steps):
        x = _random_crops(images, batch, crop, generator)
        terms = rate_distortion_loss(model(x), x, lmbda)
        optimizer.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        optimizer.step()
        aux_loss = model.aux_loss()
        aux_optimizer.zero_grad()
        aux_loss.backward()
        aux_optimizer.step()
        losses.append(float(terms["loss"].detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            logger.info("step %d: loss %.4f, bpp %.4f, mse %.6f", step, losses[-1], float(terms["bpp"]),
                        float(terms["mse"]))
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m visattn.tasks.compression``: train a small S2LIC on scikit-image's pictures, save a checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m visattn.tasks.compression", description=main.__doc__)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (default 300)")
    parser.add_argument("--lmbda", type=float, default=0.0130, help="rate-distortion trade-off (default 0.013)")
    parser.add_argument("--crop", type=int, default=64, help="training crop side, a multiple of 64 (default 64)")
    parser.add_argument("--batch", type=int, default=8, help="crops per step (default 8)")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..models.s2lic import S2LIC

    torch.manual_seed(0)
    model = S2LIC(**TINY_CONFIG)
    images = [sample_image(name) for name in TRAIN_IMAGES]
    train(model, images, args.steps, args.lmbda, args.crop, args.batch, args.lr, log_every=25)
    save_checkpoint(model.eval(), args.out, lmbda=args.lmbda, steps=args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
