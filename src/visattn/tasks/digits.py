"""Upscaled digits: scikit-learn's 8 x 8 handwritten digits (the UCI optical recognition set, 1797 images, shipped
with scikit-learn, nothing downloaded) blown up by nearest-neighbour to ``size`` x ``size``, with a little seeded
noise. Ten balanced classes; a fixed fifth of each class is held out for testing, so train and test images
differ. An 8 x 8 digit upscaled to 32 x 32 spans 64 patches of 4 x 4: recognising it means combining them.

Oracle: :func:`digits_oracle` shrinks an image back to 8 x 8 (block mean) and takes the nearest training digit.

Tensors for training loops (benchmarks, tests): :func:`digits_tensors` gives all 1,797 images as a float32 batch
upscaled by interpolation, :func:`stratified_digits` a seeded stratified split standardised with the training
statistics, :func:`heldout_digits` the fixed split that holds out every ``HOLDOUT``-th image of the whole set,
standardised with the statistics of all images.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

HOLDOUT = 5
"""Every ``HOLDOUT``-th image of each class (in scikit-learn's order) is a test image."""
NOISE = 0.05


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


@lru_cache(maxsize=4)
def digit_pool(split: str, label: int) -> np.ndarray:
    """The 8 x 8 images in [0, 1] of digit ``label`` in ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, targets = _digits()
    pool = images[targets == label]
    held = np.arange(len(pool)) % HOLDOUT == 0
    return pool[held] if split == "test" else pool[~held]


def digits_sample(size: int, label: int, rng: np.random.Generator, *, split: str = "train") -> np.ndarray:
    """One ``(size, size)`` float32 image of digit ``label`` drawn from ``split``; ``size`` must be a multiple of 8."""
    if not 0 <= label <= 9:
        raise ValueError(f"label must be a digit 0..9, got {label!r}")
    if size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8, got {size!r}")
    pool = digit_pool(split, label)
    digit = pool[int(rng.integers(len(pool)))]
    factor = size // 8
    image = np.kron(digit, np.ones((factor, factor), dtype=np.float32))
    return np.clip(image + rng.normal(0.0, NOISE, image.shape).astype(np.float32), 0.0, 1.0)


def digits_oracle(image: np.ndarray) -> int:
    """The label of the nearest training digit (Euclidean) to ``image`` shrunk back to 8 x 8."""
    factor = image.shape[0] // 8
    small = image.reshape(8, factor, 8, factor).mean(axis=(1, 3))
    best, answer = np.inf, -1
    for label in range(10):
        pool = digit_pool("train", label)
        distance = float(((pool - small) ** 2).sum(axis=(1, 2)).min())
        if distance < best:
            best, answer = distance, label
    return answer


_ALIGNABLE = ("linear", "bilinear", "bicubic", "trilinear")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def digits_tensors(size: int = 8, *, channels: int = 1, mode: str = "bilinear") -> tuple[Tensor, Tensor]:
    """All 1,797 digits in scikit-learn's order: float32 images ``(1797, channels, size, size)`` in [0, 1], upscaled
    from 8 x 8 by ``F.interpolate`` in ``mode`` (``"bilinear"`` without corner alignment, ``"nearest"`` ...) when
    ``size`` is not 8 and repeated over ``channels``, and their int64 labels."""
    import torch
    import torch.nn.functional as F

    _check_positive("size", size)
    _check_positive("channels", channels)
    images, targets = _digits()
    x = torch.from_numpy(images.copy())[:, None]
    if size != 8:
        x = F.interpolate(x, size=size, mode=mode, align_corners=False if mode in _ALIGNABLE else None)
    if channels != 1:
        x = x.expand(-1, channels, -1, -1).contiguous()
    return x, torch.from_numpy(targets.copy())


def stratified_digits(size: int = 8, *, channels: int = 1, mode: str = "bilinear", seed: int = 0,
                      test_size: float = 0.25) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`digits_tensors` split by scikit-learn's ``train_test_split`` (stratified by label, ``random_state=seed``,
    a ``test_size`` fraction held out) and standardised, ``x' = (x - m) / s``, with the mean ``m`` and standard
    deviation ``s`` of the training images: ``(x_train, y_train, x_test, y_test)``."""
    from sklearn.model_selection import train_test_split

    x, y = digits_tensors(size, channels=channels, mode=mode)
    train, test = train_test_split(range(len(y)), test_size=test_size, random_state=seed, stratify=y.numpy())
    x_train, x_test = x[train], x[test]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y[train], (x_test - mean) / std, y[test]


def heldout_digits(size: int = 8, *, channels: int = 1,
                   mode: str = "bilinear") -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """:func:`digits_tensors` standardised with the mean and standard deviation of all images, every
    ``HOLDOUT``-th image of the whole set (in scikit-learn's order) held out: ``((x_train, y_train), (x_test,
    y_test))``, 1,437 and 360 images."""
    import torch

    _check_positive("channels", channels)
    x, y = digits_tensors(size, mode=mode)
    x = (x - x.mean()) / x.std()
    if channels != 1:
        x = x.expand(-1, channels, -1, -1).contiguous()
    held = torch.arange(len(y)) % HOLDOUT == 0
    return (x[~held], y[~held]), (x[held], y[held])
