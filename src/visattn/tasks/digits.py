"""Upscaled digits: scikit-learn's 8 x 8 handwritten digits (the UCI optical recognition set, 1797 images, shipped
with scikit-learn, nothing downloaded) blown up by nearest-neighbour to ``size`` x ``size``, with a little seeded
noise. Ten balanced classes; a fixed fifth of each class is held out for testing, so train and test images
differ. An 8 x 8 digit upscaled to 32 x 32 spans 64 patches of 4 x 4: recognising it means combining them.

Oracle: :func:`digits_oracle` shrinks an image back to 8 x 8 (block mean) and takes the nearest training digit.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

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
