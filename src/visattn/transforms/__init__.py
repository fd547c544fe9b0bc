"""Geometric and photometric transforms, each with its paper: polar resampling (RST), log-polar foveation and
fixation-grid localisation (Foveated Retinotopy), RoI tanh-polar / tanh-Cartesian warps (RTNet), adaptive polyphase
anchoring (Reviving Shift Equivariance), Vision Matters perturbations. See docs/transforms.md.

The perturbations (torchvision transforms) are imported on first access, not with the package."""

import importlib

from .fixation_grid import Localization, fit_gaussian_2d, fixation_grid, likelihood_map, localize
from .log_polar import LogPolarFoveation, inverse_log_polar, log_polar, log_polar_grid, ring_ratio
from .polar import (
    disk_mask,
    polar_center,
    polar_inverse,
    polar_max_radius,
    polar_resample,
    polar_sample_points,
)
from .polyphase import PolyphaseAnchor, polyphase_anchor, polyphase_index, polyphase_norms, polyphase_unanchor
from .polyphase_layers import (
    AnchoredSubsampledAttention,
    AnchoredWindowAttention,
    CircularPEG,
    ShiftEquivariantPatchEmbed,
    anchored_window_partition,
    anchored_window_reverse,
)
from .shift_equivariant import make_shift_equivariant
from .tanh_polar import (
    restore_probabilities,
    roi_tanh_polar_restore,
    roi_tanh_polar_warp,
    roi_tanh_restore,
    roi_tanh_warp,
    tanh_cartesian_to_tanh_polar,
    tanh_polar_to_tanh_cartesian,
)

__all__ = [
    "AnchoredSubsampledAttention",
    "AnchoredWindowAttention",
    "CircularPEG",
    "DistractorConcat",
    "DominanceMixup",
    "Localization",
    "LogPolarFoveation",
    "PolyphaseAnchor",
    "RandomRotationExpand",
    "ShiftEquivariantPatchEmbed",
    "anchored_window_partition",
    "anchored_window_reverse",
    "concat_distractor",
    "disk_mask",
    "dominance_mixup",
    "fit_gaussian_2d",
    "fixation_grid",
    "inverse_log_polar",
    "letterbox",
    "likelihood_map",
    "localize",
    "log_polar",
    "log_polar_grid",
    "make_shift_equivariant",
    "polar_center",
    "polar_inverse",
    "polar_max_radius",
    "polar_resample",
    "polar_sample_points",
    "polyphase_anchor",
    "polyphase_index",
    "polyphase_norms",
    "polyphase_unanchor",
    "restore_probabilities",
    "ring_ratio",
    "roi_tanh_polar_restore",
    "roi_tanh_polar_warp",
    "roi_tanh_restore",
    "roi_tanh_warp",
    "rotate_expand",
    "tanh_cartesian_to_tanh_polar",
    "tanh_polar_to_tanh_cartesian",
]

_PERTURBATIONS = ("DistractorConcat", "DominanceMixup", "RandomRotationExpand", "concat_distractor",
                  "dominance_mixup", "letterbox", "rotate_expand")


def __getattr__(name: str) -> object:
    """The Vision Matters perturbations (``torchvision.transforms.v2`` transforms) are imported on first access:
    importing torchvision imports torch._dynamo, which takes seconds."""
    if name in _PERTURBATIONS or name == "perturbations":
        module = importlib.import_module(".perturbations", __name__)
        return module if name == "perturbations" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
