"""Localisation by fixations: a likelihood map over a grid of fixations, from any classifier.

Foveated retinotopy (arXiv 2402.15480), localisation protocol of the paper's code: fixations on a regular grid
(``resolution`` points per axis, spaced ``size / (n + 1)`` apart, the borders excluded), every other row of
fixations offset by a quarter spacing one way and the rest the other way (a hexagonal lattice); around each
fixation a square view of side ``sqrt(H W) * crop_ratio`` (default 0.618) with reflecting borders is foveated
(:func:`~visattn.transforms.log_polar.log_polar`) and classified; the likelihood of a class at a fixation is its
probability (``sigmoid`` of the logit in the paper's code, or ``softmax``), and the object's location is the
fixation of highest likelihood (``method="argmax"``) or the centre of a 2-D Gaussian fitted to the likelihoods
(``method="gaussian"``).

One difference from the paper's code, made so that the procedure is one differentiable ``grid_sample`` per batch
of fixations: the view is not cropped, resized and then foveated; the log-polar grid is scaled to the view's
half-side and sampled from the full image directly (``padding_mode="reflection"``), which skips the intermediate
resize. Fixations are in pixel units (pixel centres at integers) ``(row, column)`` of the full image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._args import check_map as _check_map
from ._args import pair as _pair
from ._args import real as _real
from ._args import work_dtype
from .log_polar import log_polar_grid

__all__ = ["Localization", "fit_gaussian_2d", "fixation_grid", "likelihood_map", "localize"]


def fixation_grid(size: Sequence[int], resolution: Sequence[int] = (15, 15), hexagonal: bool = True,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixations ``(N, 2)`` as ``(row, column)`` pixels, ``N = resolution[0] * resolution[1]``, row-major.

    Fixation ``(a, b)`` is at row ``H (a + 1) / (n_r + 1)``, column ``W (b + 1) / (n_c + 1)``. With ``hexagonal``
    and ``H < W`` (the paper's code), even columns of fixations move down by a quarter of the row spacing and odd
    ones up; with ``H >= W`` the lattice is transposed (even rows right, odd rows left; the paper's code shifts
    columns along W there, which is not a hexagonal lattice).
    """
    height, width = _pair(size, "size", (1, 1))
    n_rows, n_cols = _pair(resolution, "resolution", (1, 1))
    rows = height * torch.arange(1, n_rows + 1, dtype=torch.float64, device=device) / (n_rows + 1)
    cols = width * torch.arange(1, n_cols + 1, dtype=torch.float64, device=device) / (n_cols + 1)
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    if hexagonal:
        if height < width:
            grid_r = grid_r + (height / (n_rows + 1) / 4) * _alternate(n_cols, device)[None, :]
        else:
            grid_c = grid_c + (width / (n_cols + 1) / 4) * _alternate(n_rows, device)[:, None]
    return torch.stack((grid_r, grid_c), dim=-1).reshape(-1, 2).to(dtype)


def _alternate(n: int, device: torch.device | str | None) -> Tensor:
    """``+1, -1, +1, ...`` of length ``n``, float64."""
    return 1.0 - 2.0 * (torch.arange(n, device=device) % 2).to(torch.float64)


def _normalised(points: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixel ``(row, column)`` -> ``grid_sample`` ``(x, y)`` with ``align_corners=False``."""
    height, width = size
    return torch.stack(((2 * points[..., 1] + 1) / width - 1, (2 * points[..., 0] + 1) / height - 1), dim=-1)


def likelihood_map(classifier: Callable[[Tensor], Tensor], image: Tensor, target: int | Tensor,
                   fixations: Tensor, out_size: Sequence[int] = (224, 224), crop_ratio: float = 0.618,
                   activation: str = "sigmoid", chunk: int = 64, **log_polar_kwargs: float) -> Tensor:
    """Likelihood of class ``target`` at each fixation: ``(B, N)``.

    For image ``b`` and fixation ``n``: ``L[b, n] = act(classifier(fovea(image_b, fixation_n)))[target_b]`` where
    ``fovea`` is the log-polar grid of :func:`~visattn.transforms.log_polar.log_polar` (``log_polar_kwargs``:
    ``r_min_exp``, ``r_max_exp``, ``theta0``) scaled so that its outer ring is a circle of radius
    ``side / 2`` pixels, ``side = sqrt(H W) * crop_ratio`` (the paper's grid of radius 1 reaches the edge of the
    view), sampled with reflecting borders, and ``act`` is ``sigmoid`` (the
    paper's code) or ``softmax`` over the classes. ``classifier`` maps ``(n, C, R, A)`` to logits ``(n, K)``;
    fixations are classified ``chunk`` at a time. Differentiable in ``image`` when ``classifier`` is.
    """
    _check_map(image, "image", "(B, C, H, W)")
    if activation not in ("sigmoid", "softmax"):
        raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
    ratio = _real(crop_ratio, "crop_ratio")
    if ratio <= 0:
        raise ValueError(f"crop_ratio must be > 0, got {crop_ratio!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    if not isinstance(fixations, Tensor) or fixations.dim() != 2 or fixations.shape[1] != 2:
        raise ValueError(f"fixations must be an (N, 2) tensor of (row, column) pixels, got {fixations!r}")
    batch, _, height, width = image.shape
    targets = torch.as_tensor(target, device=image.device).long().expand(batch)
    work = work_dtype(image)
    short = min(height, width)
    base = log_polar_grid(out_size, radius=math.sqrt(height * width) * ratio / short, device=image.device,
                          dtype=work, **log_polar_kwargs)
    base = base * base.new_tensor([short / width, short / height])
    centres = _normalised(fixations.to(device=image.device, dtype=work), (height, width))
    rows = []
    for start in range(0, centres.shape[0], chunk):
        part = centres[start:start + chunk]
        n = part.shape[0]
        grid = base.unsqueeze(0) + part.repeat(batch, 1)[:, None, None, :]
        views = image.to(work).repeat_interleave(n, dim=0)
        fovea = F.grid_sample(views, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        logits = classifier(fovea.to(image.dtype))
        probs = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)
        rows.append(probs.gather(1, targets.repeat_interleave(n)[:, None]).reshape(batch, n))
    return torch.cat(rows, dim=1)


def fit_gaussian_2d(points: Tensor, values: Tensor, steps: int = 200) -> Tensor:
    """Centres ``(B, 2)`` of 2-D Gaussians fitted by least squares to ``values`` ``(B, N)`` at ``points`` ``(N, 2)``.

    Model (the paper's fit): ``g(q) = a exp(-(q - mu)^T Sigma^{-1} (q - mu) / 2)``, ``Sigma`` a rotated diagonal,
    ``a`` in ``(0, 1)``; points are scaled to ``[-1, 1]`` by their bounding box for the fit. Started at the
    maximum and refined with L-BFGS (``steps`` iterations at most, float64, no gradient through the fit). The
    centre is clamped to the points' bounding box, as the paper constrains it to the image.
    """
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be an (N, 2) tensor, got {points!r}")
    if not isinstance(values, Tensor) or values.dim() != 2 or values.shape[1] != points.shape[0]:
        shape = tuple(values.shape) if isinstance(values, Tensor) else values
        raise ValueError(f"values must be shaped (B, N) with N = {points.shape[0]}, got {shape!r}")
    pts = points.detach().to(torch.float64)
    vals = values.detach().to(device=pts.device, dtype=torch.float64)
    lo, hi = pts.amin(0), pts.amax(0)
    half = ((hi - lo) / 2).clamp_min(1e-12)
    mid = (hi + lo) / 2
    q = (pts - mid) / half
    centres = []
    for v in vals:
        start = q[v.argmax()]
        amp0 = v.max().clamp(1e-6, 1 - 1e-6)
        params = torch.cat((start, torch.log(torch.full((2,), 0.5, dtype=torch.float64, device=pts.device)),
                            torch.zeros(1, dtype=torch.float64, device=pts.device),
                            torch.logit(amp0)[None])).requires_grad_(True)
        opt = torch.optim.LBFGS([params], max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")

        def closure(v: Tensor = v, params: Tensor = params, opt: torch.optim.LBFGS = opt) -> Tensor:
            opt.zero_grad()
            loss = ((_gaussian(q, params) - v) ** 2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        centres.append(params.detach()[:2].clamp(-1, 1))
    return torch.stack(centres) * half + mid


def _gaussian(q: Tensor, params: Tensor) -> Tensor:
    mu, log_sigma, theta, amp = params[:2], params[2:4], params[4], torch.sigmoid(params[5])
    d = q - mu
    c, s = torch.cos(theta), torch.sin(theta)
    u, w = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
    return amp * torch.exp(-0.5 * ((u / log_sigma[0].exp()) ** 2 + (w / log_sigma[1].exp()) ** 2))


@dataclass(frozen=True)
class Localization:
    """Result of :func:`localize`: ``location`` ``(B, 2)`` pixels ``(row, column)``, the ``likelihood`` ``(B, N)``
    over ``fixations`` ``(N, 2)``."""

    location: Tensor
    likelihood: Tensor
    fixations: Tensor


def localize(classifier: Callable[[Tensor], Tensor], image: Tensor, target: int | Tensor,
             resolution: Sequence[int] = (15, 15), hexagonal: bool = True, method: str = "argmax",
             out_size: Sequence[int] = (224, 224), crop_ratio: float = 0.618, activation: str = "sigmoid",
             chunk: int = 64, **log_polar_kwargs: float) -> Localization:
    """Locate class ``target`` in ``image`` ``(B, C, H, W)`` by fixations (arXiv 2402.15480).

    :func:`fixation_grid` -> :func:`likelihood_map` -> the fixation of highest likelihood (``method="argmax"``,
    the first one on ties) or the centre of :func:`fit_gaussian_2d` (``method="gaussian"``).
    """
    if method not in ("argmax", "gaussian"):
        raise ValueError(f"method must be 'argmax' or 'gaussian', got {method!r}")
    _check_map(image, "image", "(B, C, H, W)")
    fixations = fixation_grid(tuple(image.shape[-2:]), resolution, hexagonal, device=image.device)
    likelihood = likelihood_map(classifier, image, target, fixations, out_size, crop_ratio, activation, chunk,
                                **log_polar_kwargs)
    if method == "argmax":
        location = fixations[likelihood.argmax(dim=1)]
    else:
        location = fit_gaussian_2d(fixations, likelihood).to(fixations.dtype)
    return Localization(location, likelihood, fixations)
