import pytest
import torch
from torch import nn

from visattn.search.foveated import FoveatedClassifier, fixation_policy, foveated_likelihood
from visattn.transforms.fixation_grid import likelihood_map


class FovealSpot(nn.Module):
    """Logit = 20 * (mean of the 4 innermost rings of channel 0 - 0.5): high when a bright spot is fixated."""

    def forward(self, x):
        return 20 * (x[:, :1, -4:].mean(dim=(2, 3)) - 0.5)


def _blob(row, col, size=(40, 48), dtype=torch.float64):
    r = torch.arange(size[0], dtype=dtype)[:, None]
    c = torch.arange(size[1], dtype=dtype)[None, :]
    return torch.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * 3.0 ** 2))[None, None]


def test_forward_matches_likelihood_map_float64():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 21, 27, generator=g, dtype=torch.float64)
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 10, 4)).double()
    model = FoveatedClassifier(head, out_size=(8, 10))
    fix = torch.tensor([[5.0, 7.5], [13.0, 20.0]], dtype=torch.float64)
    logits = model(img, fix[:1].expand(2, 2))
    ref = likelihood_map(head, img, 2, fix, out_size=(8, 10))
    torch.testing.assert_close(torch.sigmoid(logits[:, 2]), ref[:, 0])
    # naive: innermost ring sits (almost) at the fixation -> bilinear value at the fixation pixel
    fov = model.fovea(img, torch.tensor([[5.0, 7.0], [13.0, 20.0]], dtype=torch.float64))
    torch.testing.assert_close(fov[0, :, -1].mean(-1), img[0, :, 5, 7], atol=2e-2, rtol=0)


def test_likelihood_map_peaks_at_object_and_policy_finds_it():
    img = _blob(12, 33)
    model = FoveatedClassifier(FovealSpot(), out_size=(16, 16))
    lik, pts = foveated_likelihood(model, img, 0, resolution=(7, 9))
    assert lik.shape == (1, 7, 9)
    best = pts[lik.flatten(1).argmax(1)][0]
    dists = torch.linalg.vector_norm(pts - torch.tensor([12.0, 33.0], dtype=pts.dtype), dim=1)
    assert torch.equal(best, pts[dists.argmin()])
    search = fixation_policy(lik, pts, threshold=float(lik.max()) - 1e-9, ior_radius=4.0, max_fixations=5)
    assert search.found.tolist() == [True] and search.num_fixations.tolist() == [1]
    torch.testing.assert_close(search.fixations[0, 0], best)
    assert torch.isnan(search.fixations[0, 1:]).all()


def test_policy_inhibition_of_return():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(30, 2, generator=g, dtype=torch.float64) * 20
    lik = torch.rand(3, 30, generator=g, dtype=torch.float64)
    search = fixation_policy(lik, pts, threshold=2.0, ior_radius=3.0, max_fixations=12)
    assert not search.found.any()
    for b in range(3):
        n = int(search.num_fixations[b])
        path = search.fixations[b, :n]
        assert torch.isfinite(path).all() and torch.isnan(search.fixations[b, n:]).all()
        d = torch.cdist(path, path) + torch.eye(n, dtype=path.dtype) * 1e9
        assert (d > 3.0).all()
        # naive greedy: each fixation is the most likely candidate not within 3 px of earlier ones
        allowed = torch.ones(30, dtype=torch.bool)
        for t in range(n):
            i = lik[b].masked_fill(~allowed, -1).argmax()
            torch.testing.assert_close(path[t], pts[i])
            allowed &= torch.linalg.vector_norm(pts - pts[i], dim=1) > 3.0
        assert n == 12 or not allowed.any()


def test_trains_with_falling_loss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 1))
    model = FoveatedClassifier(net, out_size=(8, 8))
    imgs = torch.cat([_blob(10, 10, (24, 24), torch.float32) for _ in range(8)])
    fix = torch.cat([torch.tensor([[10.0, 10.0]]).expand(4, 2), torch.tensor([[20.0, 3.0]]).expand(4, 2)])
    y = torch.tensor([1.0] * 4 + [0.0] * 4)[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        loss = nn.functional.binary_cross_entropy_with_logits(model(imgs, fix), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_meta_device():
    with torch.device("meta"):
        model = FoveatedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), out_size=(4, 4))
        out = model(torch.zeros(2, 3, 10, 12), torch.zeros(2, 2))
    assert out.shape == (2, 2) and out.device.type == "meta"
    s = fixation_policy(torch.zeros(2, 5, device="meta"), torch.zeros(5, 2, device="meta"), max_fixations=3)
    assert s.fixations.shape == (2, 3, 2) and s.fixations.device.type == "meta"


def test_bad_inputs():
    model = FoveatedClassifier(FovealSpot(), out_size=(4, 4))
    with pytest.raises(ValueError, match="fixation"):
        model(torch.zeros(2, 1, 8, 8), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="crop_ratio"):
        FoveatedClassifier(FovealSpot(), crop_ratio=0)
    with pytest.raises(ValueError, match="out_size"):
        FoveatedClassifier(FovealSpot(), out_size=(1, 4))
    with pytest.raises(ValueError, match="max_fixations"):
        fixation_policy(torch.zeros(1, 4), torch.zeros(4, 2), max_fixations=0)
    with pytest.raises(ValueError, match="fixations must be shaped"):
        fixation_policy(torch.zeros(1, 4), torch.zeros(3, 2))


def test_gradcheck_fovea():
    model = FoveatedClassifier(nn.Flatten(), out_size=(3, 4))
    img = torch.rand(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    fix = torch.tensor([[2.2, 2.7]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: model(x, fix), (img,))
