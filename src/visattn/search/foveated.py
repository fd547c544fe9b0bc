"""Foveated localisation: any classifier behind a log-polar fovea, likelihood maps and a fixation policy.

Foveated retinotopy ("Foveated Retinotopy Improves Classification and Localization in CNNs", Dabane, Perrinet et
al., arXiv 2402.15480). The transform and the fixation-grid likelihood are in :mod:`visattn.transforms`
(:func:`~visattn.transforms.log_polar.log_polar_grid`, :func:`~visattn.transforms.fixation_grid.likelihood_map`);
this module puts them around a classifier:

- :class:`FoveatedClassifier`: ``logits = classifier(fovea(image, f))`` where ``fovea`` samples the log-polar grid
  ``f + s * 2 ** e_i (cos theta_j, sin theta_j)`` (``s`` the half-side ``sqrt(H W) * crop_ratio / 2`` of the view
  in pixels, reflecting borders), exactly the view :func:`~visattn.transforms.fixation_grid.likelihood_map` uses;
- :func:`foveated_likelihood`: the likelihood ``L[b, a, c] = sigmoid(logit_target)`` over a grid of fixations,
  shaped as the grid;
- :func:`fixation_policy`: a scanpath over the likelihood map used as a priority map: each fixation goes to the
  most likely candidate not inhibited, candidates within ``ior_radius`` pixels of a visited fixation are inhibited
  (inhibition of return), and the search stops when the fixated likelihood reaches ``threshold`` or after
  ``max_fixations``. This greedy policy is ours; the paper localises by the maximum of the map (its first
  fixation here) or a Gaussian fit.

Fixations are pixels ``(row, column)`` of the full image (pixel centres at integers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visattn.transforms.fixation_grid import fixation_grid, likelihood_map
from visattn.transforms.log_polar import log_polar_grid

__all__ = ["FoveatedClassifier", "FoveatedSearch", "fixation_policy", "foveated_likelihood"]


class FoveatedClassifier(nn.Module):
    """``classifier`` seeing the image through a log-polar fovea at a fixation (arXiv 2402.15480).

    ``classifier`` maps ``(B, C, R, A)`` (rings x angles, ``out_size``) to logits ``(B, K)``.
    ``forward(image, fixation)``: ``image`` ``(B, C, H, W)``, ``fixation`` ``(B, 2)`` pixels ``(row, column)``.
    """

    def __init__(self, classifier: nn.Module, out_size: Sequence[int] = (32, 32), crop_ratio: float = 0.618,
                 r_min_exp: float = -7.5, r_max_exp: float = 0.0, theta0: float = -math.pi / 4) -> None:
        super().__init__()
        if not callable(classifier):
            raise TypeError(f"classifier must be callable, got {classifier!r}")
        if not (isinstance(crop_ratio, (int, float)) and crop_ratio > 0):
            raise ValueError(f"crop_ratio must be > 0, got {crop_ratio!r}")
        log_polar_grid(out_size, r_min_exp, r_max_exp, theta0)
        self.classifier = classifier
        self.out_size = tuple(int(s) for s in out_size)
        self.crop_ratio = float(crop_ratio)
        self.log_polar_kwargs = {"r_min_exp": float(r_min_exp), "r_max_exp": float(r_max_exp),
                                 "theta0": float(theta0)}

    def fovea(self, image: Tensor, fixation: Tensor) -> Tensor:
        """The log-polar view ``(B, C, R, A)`` of ``image`` about ``fixation`` ``(B, 2)``."""
        if not isinstance(image, Tensor) or image.dim() != 4:
            raise ValueError(f"image must be a (B, C, H, W) tensor, got {image!r}")
        batch, _, height, width = image.shape
        if not isinstance(fixation, Tensor) or fixation.shape != (batch, 2):
            raise ValueError(f"fixation must be a ({batch}, 2) tensor of (row, column) pixels, got {fixation!r}")
        short = min(height, width)
        base = log_polar_grid(self.out_size, radius=math.sqrt(height * width) * self.crop_ratio / short,
                              device=image.device, dtype=image.dtype, **self.log_polar_kwargs)
        base = base * base.new_tensor([short / width, short / height])
        fix = fixation.to(image.dtype)
        centre = torch.stack(((2 * fix[:, 1] + 1) / width - 1, (2 * fix[:, 0] + 1) / height - 1), dim=-1)
        grid = base.unsqueeze(0) + centre[:, None, None, :]
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def forward(self, image: Tensor, fixation: Tensor) -> Tensor:
        return self.classifier(self.fovea(image, fixation))


def foveated_likelihood(model: FoveatedClassifier, image: Tensor, target: int | Tensor,
                        resolution: Sequence[int] = (9, 9), hexagonal: bool = True, activation: str = "sigmoid"
                        ) -> tuple[Tensor, Tensor]:
    """Likelihood map ``(B, n_rows, n_cols)`` of ``target`` and the fixations ``(n_rows * n_cols, 2)`` (pixels).

    ``L[b, a, c] = act(model(image, fixation_grid[a, c]))[target]`` (arXiv 2402.15480's localisation).
    """
    if not isinstance(model, FoveatedClassifier):
        raise TypeError(f"model must be a FoveatedClassifier, got {type(model).__name__}")
    if not isinstance(image, Tensor) or image.dim() != 4:
        raise ValueError(f"image must be a (B, C, H, W) tensor, got {image!r}")
    fixations = fixation_grid(image.shape[-2:], resolution, hexagonal, device=image.device, dtype=image.dtype)
    lik = likelihood_map(model.classifier, image, target, fixations, model.out_size, model.crop_ratio, activation,
                         **model.log_polar_kwargs)
    return lik.reshape(image.shape[0], *resolution), fixations


@dataclass(frozen=True)
class FoveatedSearch:
    """Result of :func:`fixation_policy`: ``fixations`` ``(B, T, 2)`` pixels (NaN after the search stopped),
    their ``likelihood`` ``(B, T)`` (NaN likewise), ``found`` ``(B,)`` and ``num_fixations`` ``(B,)``."""

    fixations: Tensor
    likelihood: Tensor
    found: Tensor
    num_fixations: Tensor


def fixation_policy(likelihood: Tensor, fixations: Tensor, threshold: float = 0.5, ior_radius: float = 1.0,
                    max_fixations: int = 10) -> FoveatedSearch:
    """Greedy scanpath over a likelihood map with inhibition of return (see the module docstring).

    ``likelihood`` ``(B, N)`` or ``(B, n_rows, n_cols)`` over ``fixations`` ``(N, 2)`` pixels. No host sync: the
    loop runs ``max_fixations`` steps and masks finished searches.
    """
    if not isinstance(likelihood, Tensor) or likelihood.dim() not in (2, 3):
        raise ValueError(f"likelihood must be a (B, N) or (B, rows, cols) tensor, got {likelihood!r}")
    lik = likelihood.flatten(1)
    if not isinstance(fixations, Tensor) or fixations.shape != (lik.shape[1], 2):
        raise ValueError(f"fixations must be shaped ({lik.shape[1]}, 2), got {fixations!r}")
    if isinstance(max_fixations, bool) or not isinstance(max_fixations, int) or max_fixations < 1:
        raise ValueError(f"max_fixations must be an int >= 1, got {max_fixations!r}")
    if not (isinstance(ior_radius, (int, float)) and ior_radius >= 0):
        raise ValueError(f"ior_radius must be a number >= 0, got {ior_radius!r}")
    pts = fixations.to(lik.dtype)
    near = torch.cdist(pts, pts) <= ior_radius
    batch = lik.shape[0]
    inhibited = torch.zeros_like(lik, dtype=torch.bool)
    done = torch.zeros(batch, dtype=torch.bool, device=lik.device)
    found = torch.zeros_like(done)
    count = torch.zeros(batch, dtype=torch.long, device=lik.device)
    nan = lik.new_tensor(float("nan"))
    path, values = [], []
    for _ in range(max_fixations):
        scores = lik.masked_fill(inhibited, float("-inf"))
        idx = scores.argmax(dim=1)
        done = done | inhibited.all(dim=1)
        value = lik.gather(1, idx[:, None]).squeeze(1)
        path.append(torch.where(done[:, None], nan, pts[idx]))
        values.append(torch.where(done, nan, value))
        count = count + (~done).long()
        hit = ~done & (value >= threshold)
        found = found | hit
        inhibited = inhibited | near[idx]
        done = done | hit
    return FoveatedSearch(torch.stack(path, dim=1), torch.stack(values, dim=1), found, count)
