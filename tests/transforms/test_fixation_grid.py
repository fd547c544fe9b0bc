"""Fixation-grid localisation (Foveated Retinotopy, arXiv 2402.15480): grid positions, likelihood map against a
per-fixation loop over log_polar, argmax and Gaussian-fit locations, errors."""

from __future__ import annotations

import math

import pytest
import torch

from visattn.transforms import fit_gaussian_2d, fixation_grid, likelihood_map, localize, log_polar

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grid_positions_and_hexagonal_offsets():
    g = fixation_grid((10, 20), (2, 3), hexagonal=False, dtype=torch.float64)
    rows, cols = [10 / 3, 20 / 3], [5.0, 10.0, 15.0]
    expected = torch.tensor([[r, c] for r in rows for c in cols], dtype=torch.float64)
    torch.testing.assert_close(g, expected)
    hexa = fixation_grid((10, 20), (2, 3), dtype=torch.float64)  # H < W: columns alternate +-(spacing_h / 4)
    shift = torch.tensor([1.0, -1.0, 1.0] * 2, dtype=torch.float64) * (10 / 3 / 4)
    torch.testing.assert_close(hexa[:, 0], expected[:, 0] + shift)
    torch.testing.assert_close(hexa[:, 1], expected[:, 1])
    tall = fixation_grid((20, 10), (3, 2), dtype=torch.float64)  # H >= W: rows alternate along W
    torch.testing.assert_close(tall[:, 1] - fixation_grid((20, 10), (3, 2), False, dtype=torch.float64)[:, 1],
                               torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 1.0], dtype=torch.float64) * (10 / 3 / 4))


def test_likelihood_map_equals_a_loop_over_fixations():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    head = torch.nn.Linear(3 * 6 * 8, 5).double()

    def classifier(x):
        return head(x.flatten(1))

    fixations = fixation_grid((24, 24), (3, 3), dtype=torch.float64)
    target = torch.tensor([1, 4])
    out = likelihood_map(classifier, image, target, fixations, (6, 8), crop_ratio=0.5, chunk=4, r_min_exp=-3.0)
    side = math.sqrt(24 * 24) * 0.5
    ref = torch.empty(2, 9, dtype=torch.float64)
    for b in range(2):
        for n, (r, c) in enumerate(fixations.tolist()):
            fix = ((2 * c + 1) / 24 - 1, (2 * r + 1) / 24 - 1)
            # outer ring = side / 2 pixels = side / 24 normalised units
            fovea = log_polar(image[b:b + 1], (6, 8), fix, r_min_exp=-3.0, radius=side / 24, padding_mode="reflection")
            ref[b, n] = torch.sigmoid(classifier(fovea))[0, target[b]]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    soft = likelihood_map(classifier, image, 2, fixations, (6, 8), crop_ratio=0.5, activation="softmax")
    assert soft.shape == (2, 9) and ((soft > 0) & (soft < 1)).all()


def test_non_square_rings_are_circles_in_pixels():
    # a classifier that reads the outer ring: on a 12 x 24 image the ring must be a circle of side / 2 pixels
    image = torch.zeros(1, 1, 12, 24, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(24.0), indexing="ij")
    image[0, 0] = torch.sqrt((yy - 5.5) ** 2 + (xx - 11.5) ** 2).double()
    seen = {}

    def classifier(x):
        seen["ring"] = x[:, 0, 0]
        return torch.zeros(x.shape[0], 1, dtype=x.dtype)

    fixation = torch.tensor([[5.5, 11.5]], dtype=torch.float64)
    likelihood_map(classifier, image, 0, fixation, (4, 16), crop_ratio=8 / math.sqrt(12 * 24))
    torch.testing.assert_close(seen["ring"], torch.full((1, 16), 4.0, dtype=torch.float64), atol=0.08, rtol=0)


def test_localize_finds_a_blob_by_argmax_and_gaussian_fit():
    image = torch.zeros(1, 1, 40, 40)
    image[..., 25:31, 8:14] = 1.0  # centre (27.5, 10.5)

    def classifier(fovea):  # "object" when the innermost rings are bright
        score = fovea[:, 0, -4:].mean(dim=(1, 2)) * 20 - 5
        return torch.stack((score, torch.zeros_like(score)), dim=1)

    loc = localize(classifier, image, 0, resolution=(9, 9), out_size=(16, 16), crop_ratio=0.3)
    assert loc.likelihood.shape == (1, 81) and loc.fixations.shape == (81, 2)
    assert torch.dist(loc.location[0], torch.tensor([27.5, 10.5])) < 3.0
    fit = localize(classifier, image, 0, resolution=(9, 9), out_size=(16, 16), crop_ratio=0.3, method="gaussian")
    assert torch.dist(fit.location[0], torch.tensor([27.5, 10.5])) < 3.0


def test_gaussian_fit_recovers_a_gaussian():
    points = fixation_grid((30, 30), (7, 7), dtype=torch.float64)
    centre = torch.tensor([12.3, 17.8], dtype=torch.float64)
    d = points - centre
    values = 0.8 * torch.exp(-0.5 * ((d[:, 0] / 6.0) ** 2 + (d[:, 1] / 4.0) ** 2))
    torch.testing.assert_close(fit_gaussian_2d(points, values[None])[0], centre, atol=1e-4, rtol=0)


def test_bad_input():
    img = torch.zeros(1, 3, 8, 8)
    fix = fixation_grid((8, 8), (2, 2))
    with pytest.raises(ValueError, match="method must be 'argmax' or 'gaussian'"):
        localize(lambda x: x, img, 0, method="mean")
    with pytest.raises(ValueError, match="activation must be"):
        likelihood_map(lambda x: x, img, 0, fix, activation="relu")
    with pytest.raises(ValueError, match="crop_ratio must be > 0"):
        likelihood_map(lambda x: x, img, 0, fix, crop_ratio=0.0)
    with pytest.raises(ValueError, match="fixations must be an"):
        likelihood_map(lambda x: x, img, 0, fix[:, :1])
    with pytest.raises(ValueError, match="resolution must be >="):
        fixation_grid((8, 8), (0, 2))
    with pytest.raises(ValueError, match="values must be shaped"):
        fit_gaussian_2d(fix, torch.zeros(1, 3))
