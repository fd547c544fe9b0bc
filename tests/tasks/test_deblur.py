"""visattn.tasks.deblur: the blur generator against scipy/scikit-image oracles in float64, the loss, the metrics,
errors, and a tiny RST whose loss falls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visattn.models.rst import RadialStripTransformer
from visattn.tasks import deblur

pytestmark = pytest.mark.usefixtures("one_thread")


def test_motion_kernels_sum_to_one_and_follow_the_angle():
    length = torch.tensor([0.0, 6.0, 6.0], dtype=torch.float64)
    angle = torch.tensor([0.3, 0.0, math.pi / 2], dtype=torch.float64)
    k = deblur.motion_blur_kernel(length, angle, 9)
    torch.testing.assert_close(k.sum(dim=(1, 2)), torch.ones(3, dtype=torch.float64))
    assert k[0, 4, 4] == 1.0, "length 0 is the identity"
    assert k[1].nonzero()[:, 0].unique().tolist() == [4], "angle 0 is a horizontal line"
    torch.testing.assert_close(k[2], k[1].t(), rtol=0, atol=1e-12)
    torch.testing.assert_close(k[1], k[1].flip(-1), rtol=0, atol=1e-12)
    assert k[1].nonzero()[:, 1].tolist() == list(range(1, 8)), "6 pixels long: columns 1..7 (end points shared)"


def test_linear_motion_blur_matches_scipy_correlation():
    from scipy.ndimage import correlate

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 13, 17, generator=g, dtype=torch.float64)
    length = torch.tensor([5.0, 3.5], dtype=torch.float64)
    angle = torch.tensor([0.7, -1.2], dtype=torch.float64)
    out = deblur.linear_motion_blur(images, length, angle)
    kernels = deblur.motion_blur_kernel(length, angle, 7).numpy()
    for b in range(2):
        for c in range(3):
            expected = correlate(images[b, c].numpy(), kernels[b], mode="nearest")
            np.testing.assert_allclose(out[b, c].numpy(), expected, rtol=0, atol=1e-12)


def test_rotational_blur_matches_scikit_image_rotations():
    """The mean over angles symmetric about 0 does not depend on the rotation's sense; scikit-image rotates about
    ((W - 1) / 2, (H - 1) / 2) bilinearly with edge replication, as rotational_blur does by default."""
    from skimage.transform import rotate

    g = torch.Generator().manual_seed(1)
    images = torch.rand(1, 2, 15, 21, generator=g, dtype=torch.float64)
    spread, steps = 0.3, 5
    out = deblur.rotational_blur(images, spread, steps=steps)
    angles = np.linspace(-spread / 2, spread / 2, steps)
    for c in range(2):
        expected = np.mean([rotate(images[0, c].numpy(), math.degrees(a), order=1, mode="edge") for a in angles],
                           axis=0)
        np.testing.assert_allclose(out[0, c, 2:-2, 2:-2].numpy(), expected[2:-2, 2:-2], rtol=0, atol=1e-9)


def test_rotational_blur_of_zero_angle_is_the_identity_and_centres_are_per_image():
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(deblur.rotational_blur(images, 0.0), images, rtol=0, atol=1e-12)
    centre = torch.tensor([[2.0, 3.0], [10.0, 12.0]], dtype=torch.float64)
    a = deblur.rotational_blur(images, 0.4, centre)
    b = deblur.rotational_blur(images, 0.4)
    assert not torch.allclose(a, b)


def test_random_blur_is_seeded_and_blurs():
    images = deblur.random_crops(deblur.sample_images(("astronaut",)), 4, 32, torch.Generator().manual_seed(0))
    one = deblur.random_blur(images, torch.Generator().manual_seed(5))
    two = deblur.random_blur(images, torch.Generator().manual_seed(5))
    three = deblur.random_blur(images, torch.Generator().manual_seed(6))
    assert torch.equal(one, two) and not torch.equal(one, three)
    assert one.shape == images.shape
    assert deblur.psnr(one.clamp(0, 1), images) < 40


def test_crops_are_textured_and_take_all_eight_symmetries_of_the_square():
    g = torch.Generator().manual_seed(4)
    image = torch.rand(3, 5, 5, generator=g)
    symmetries = [t(image) for t in (
        lambda x: x, lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.flip(-1, -2),
        lambda x: x.transpose(-1, -2), lambda x: x.flip(-1).transpose(-1, -2), lambda x: x.flip(-2).transpose(-1, -2),
        lambda x: x.flip(-1, -2).transpose(-1, -2))]
    crops = deblur.random_crops([image], 64, 5, g)
    seen = {next(i for i, t in enumerate(symmetries) if torch.equal(c, t)) for c in crops}
    assert seen == set(range(8))
    half_flat = torch.cat((torch.full((3, 32, 32), 0.5), torch.rand(3, 32, 32, generator=g)), dim=-1)
    textured = deblur.random_crops([half_flat], 16, 16, g, min_std=0.05)
    assert bool((textured.std(dim=(1, 2, 3)) >= 0.05).all())
    assert bool((deblur.random_crops([half_flat], 64, 16, g).std(dim=(1, 2, 3)) < 0.05).any())


def test_train_deblur_follows_the_release_recipe(monkeypatch):
    """Gradients clipped to norm 0.01 before every step, AdamW with weight decay 1e-3 and betas (0.9, 0.9), and a
    linear warm-up into a cosine schedule; the untrained zero-initialised network scores the blurred input."""
    clipped, rates = [], []
    real_clip, real_step = torch.nn.utils.clip_grad_norm_, torch.optim.AdamW.step

    def clip(parameters, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    def step(self, *args, **kwargs):
        group = self.param_groups[0]
        rates.append((group["lr"], group["weight_decay"], group["betas"]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    torch.manual_seed(0)
    model = RadialStripTransformer(dim=4, num_blocks=(1, 1, 1), num_refinement_blocks=0, img_size=32,
                                   zero_init_output=True)
    report = deblur.train_deblur(model, steps=4, batch_size=2, crop=32, lr=1e-3, warmup_steps=2, eval_count=2,
                                 log_every=0)
    assert clipped == [0.01] * 4
    assert [r[1:] for r in rates] == [(1e-3, (0.9, 0.9))] * 4
    expected = [1e-3 * f for f in (0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 2)))]
    assert [r[0] for r in rates] == pytest.approx(expected)
    assert report.psnr_untrained == pytest.approx(report.psnr_blurred, abs=1e-9)
    assert 15 < report.psnr_blurred < 40, "the held-out crops are degraded by the blur"
    assert len(report.losses) == 4 and report.history[-1] == (4, report.psnr_restored)


def test_loss_is_l1_plus_a_tenth_of_the_spectrum_l1():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.rand(2, 3, 8, 10, generator=g, dtype=torch.float64), torch.rand(2, 3, 8, 10, generator=g,
                                                                                          dtype=torch.float64)
    p, t = np.fft.rfft2(pred.numpy()), np.fft.rfft2(target.numpy())
    spectral = np.mean(np.abs(np.stack([p.real - t.real, p.imag - t.imag])))
    expected = np.mean(np.abs(pred.numpy() - target.numpy())) + 0.1 * spectral
    assert deblur.deblur_loss(pred, target).item() == pytest.approx(expected, rel=1e-12)
    assert deblur.deblur_loss(pred, pred).item() == 0.0


def test_psnr_and_ssim_are_scikit_images():
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert deblur.psnr(pred, target) == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-9)
    assert 0 < deblur.ssim(pred, target) < deblur.ssim(target, target) == pytest.approx(1.0)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: deblur.linear_motion_blur(torch.rand(3, 8, 8), 3.0, 0.0), ValueError, "images"),
    (lambda: deblur.linear_motion_blur(torch.rand(1, 3, 8, 8), -1.0, 0.0), ValueError, "length"),
    (lambda: deblur.linear_motion_blur(torch.rand(1, 3, 8, 8), 30.0, 0.0), ValueError, "length"),
    (lambda: deblur.rotational_blur(torch.rand(1, 3, 8, 8), 0.1, steps=0), ValueError, "steps"),
    (lambda: deblur.random_blur(torch.rand(1, 3, 8, 8), torch.Generator(), kinds=("zoom",)), ValueError, "kinds"),
    (lambda: deblur.random_crops(deblur.sample_images(("coins",)), 2, 4000, torch.Generator()), ValueError, "size"),
    (lambda: deblur.random_crops([torch.zeros(3, 8, 8)], 1, 4, torch.Generator(), min_std=0.1), ValueError,
     "min_std=0.1"),
    (lambda: deblur.random_crops([torch.zeros(3, 8, 8)], 1, 4, torch.Generator(), min_std=-1), ValueError, "min_std"),
    (lambda: deblur.train_deblur(torch.nn.Identity(), steps=5, warmup_steps=5), ValueError, "warmup_steps"),
    (lambda: deblur.train_deblur(torch.nn.Identity(), steps=5, grad_clip=0.0), ValueError, "grad_clip"),
    (lambda: deblur.sample_images(("no_such_image",)), ValueError, "names"),
    (lambda: deblur.deblur_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 4)), ValueError, "one shape"),
])
def test_bad_inputs_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_tiny_rst_loss_falls_on_blurred_crops():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    blurred, sharp = deblur.deblur_pairs(deblur.sample_images(("astronaut", "chelsea")), 2, 32, g)
    model = RadialStripTransformer(dim=8, num_blocks=(1, 1, 1), num_refinement_blocks=1, img_size=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3, betas=(0.9, 0.9))
    losses = []
    for _ in range(15):
        loss = deblur.deblur_loss(model(blurred), sharp)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


@pytest.mark.slow
def test_tiny_rst_beats_the_blurred_input_on_held_out_images():
    """Issue 17's target: after 100 CPU steps a tiny RST restores held-out blurred crops (of images it never saw)
    to a higher PSNR than the blurred input itself. Measured on this seed: +0.34 dB over a blurred input at 29.9 dB
    (seeds 1 and 2: +0.20 and -0.03 dB at 100 steps; at 300 steps seeds 0-2 give +0.28/+0.44/+0.52 dB with one
    refinement block, docs/tasks.md). About 210 s
    on the shared 2-core machine at a load of 14-16; much less on an idle one."""
    torch.manual_seed(0)
    model = RadialStripTransformer(dim=8, num_blocks=(1, 1, 1), num_refinement_blocks=0, img_size=32,
                                   zero_init_output=True)
    report = deblur.train_deblur(model, steps=100, batch_size=8, crop=32, lr=2e-3, warmup_steps=10, eval_count=16,
                                 log_every=0)
    assert report.psnr_untrained == pytest.approx(report.psnr_blurred, abs=1e-9)
    assert report.psnr_blurred < 32, "the blur degrades the held-out crops"
    assert report.psnr_restored > report.psnr_blurred + 0.1, report
    assert report.ssim_restored > report.ssim_blurred, report


def test_training_entry_runs_and_reports_metrics(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="visattn.tasks.deblur"):
        assert deblur.main(["--steps", "2", "--crop", "32", "--dim", "4", "--blocks", "1", "1", "1",
                            "--batch-size", "2", "--warmup", "0"]) == 0
    text = caplog.text
    assert "held-out PSNR: blurred" in text and "held-out SSIM" in text
