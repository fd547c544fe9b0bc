"""Geometric transforms of feature maps: polar resampling about a centre and its inverse (RST)."""

from .polar import (
    disk_mask,
    polar_center,
    polar_inverse,
    polar_max_radius,
    polar_resample,
    polar_sample_points,
)

__all__ = [
    "disk_mask",
    "polar_center",
    "polar_inverse",
    "polar_max_radius",
    "polar_resample",
    "polar_sample_points",
]
