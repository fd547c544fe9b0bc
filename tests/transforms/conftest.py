"""Fixtures for the transform tests: a naive bilinear read and a smooth analytic image."""

from __future__ import annotations

import math

import pytest
import torch


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear read of ``img`` (..., H, W) at pixel coordinates (y, x) (pixel centres at integers); 0 outside."""
    height, width = img.shape[-2:]
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(img.shape[:-2], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if wy * wx != 0 and 0 <= yy < height and 0 <= xx < width:
                out = out + wy * wx * img[..., yy, xx]
    return out


def _smooth_image(height: int, width: int, fn=None) -> torch.Tensor:
    """A smooth analytic image (1, 1, H, W) in float64, sampled at pixel centres in normalised coordinates."""
    ys = (2 * torch.arange(height, dtype=torch.float64) + 1) / height - 1
    xs = (2 * torch.arange(width, dtype=torch.float64) + 1) / width - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return (fn or _smooth_fn)(xx, yy)[None, None]


def _smooth_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sin(2.1 * x + 0.3) * torch.cos(1.7 * y - 0.2) + 0.5 * torch.exp(-3 * ((x - 0.2) ** 2 + (y + 0.1) ** 2))


@pytest.fixture(scope="session")
def bilinear():
    return _bilinear


@pytest.fixture(scope="session")
def smooth_image():
    return _smooth_image
