"""RST (arXiv 2404.00358): the frequency FFN and the radial strip block against naive float64 oracles, strips that
really are rings and rays, the network's shapes, errors and meta-device construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from contract import count_params_meta
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.models.rst import FrequencyFeedForward, RadialStripBlock, RadialStripTransformer
from visattn.transforms import polar_inverse, polar_resample

pytestmark = pytest.mark.usefixtures("one_thread")


def _naive_spectral_filter(z: np.ndarray, weight: np.ndarray, p: int) -> np.ndarray:
    """Loop over every channel and p x p window: irfft2(rfft2(window) * W[channel])."""
    out = np.empty_like(z)
    batch, channels, height, width = z.shape
    for b in range(batch):
        for c in range(channels):
            for i in range(0, height, p):
                for j in range(0, width, p):
                    spec = np.fft.rfft2(z[b, c, i:i + p, j:j + p]) * weight[c, 0, 0]
                    out[b, c, i:i + p, j:j + p] = np.fft.irfft2(spec, s=(p, p))
    return out


@pytest.mark.parametrize(("dim", "height", "width", "patch"), [(3, 8, 16, 8), (5, 12, 8, 4)])
def test_spectral_filter_matches_a_per_window_numpy_loop(dim, height, width, patch):
    torch.manual_seed(0)
    ffn = FrequencyFeedForward(dim, 1.5, patch=patch).double()
    with torch.no_grad():
        ffn.fft.normal_()
    z = torch.randn(2, ffn.fft.shape[0], height, width, dtype=torch.float64)
    expected = _naive_spectral_filter(z.numpy(), ffn.fft.detach().numpy(), patch)
    np.testing.assert_allclose(ffn.spectral_filter(z).detach().numpy(), expected, rtol=0, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(channels=st.integers(1, 5), rows=st.integers(1, 3), cols=st.integers(1, 3), patch=st.sampled_from([2, 3, 4]))
def test_spectral_filter_any_window_grid(channels, rows, cols, patch):
    torch.manual_seed(channels)
    ffn = FrequencyFeedForward(channels, 1.0, patch=patch).double()
    with torch.no_grad():
        ffn.fft.normal_()
    z = torch.randn(1, 2 * channels, rows * patch, cols * patch, dtype=torch.float64)
    expected = _naive_spectral_filter(z.numpy(), ffn.fft.detach().numpy(), patch)
    np.testing.assert_allclose(ffn.spectral_filter(z).detach().numpy(), expected, rtol=0, atol=1e-12)


def test_frequency_ffn_with_unit_spectrum_is_the_gated_convolution():
    """With W = 1 the filter is the identity: FFN = out(GELU(z1) * z2) of the depthwise convolution."""
    torch.manual_seed(0)
    ffn = FrequencyFeedForward(4, 2.0).double()
    x = torch.randn(1, 4, 8, 16, dtype=torch.float64)
    z1, z2 = ffn.dwconv(ffn.project_in(x)).chunk(2, dim=1)
    torch.testing.assert_close(ffn(x), ffn.project_out(torch.nn.functional.gelu(z1) * z2), rtol=0, atol=1e-12)


def _naive_radial_attention(block: RadialStripBlock, y: torch.Tensor) -> torch.Tensor:
    """Polar resampling, then for every polar token a softmax over its ring or ray with the paper's position term
    computed from the formula, the projection, and the inverse resampling."""
    attn, mixer = block.attn, block.attn.mixer
    rings, angles = block.grid
    size = tuple(y.shape[-2:])
    radius = block.polar_radius(size)
    polar = polar_resample(y, block.grid, None, radius)
    batch, dim = polar.shape[:2]
    wq, wk, wv = attn.qkv.weight.split(dim)
    bq, bk, bv = attn.qkv.bias.split(dim)
    a, b = mixer.a[0], mixer.b[0]
    out = torch.zeros_like(polar)
    for n in range(batch):
        for m in range(rings):
            for k in range(angles):
                q = wq @ polar[n, :, m, k] + bq
                if mixer.strip == "ring":
                    keys = [(m, j) for j in range(angles)]
                    offsets = [k - j for j in range(angles)]
                    bias = [a[d % angles] * math.cos(2 * math.pi * d / angles)
                            + b[d % angles] * math.sin(2 * math.pi * d / angles) for d in offsets]
                else:
                    keys = [(i, k) for i in range(rings)]
                    offsets = [m - i for i in range(rings)]
                    bias = [a[d + rings - 1] * math.cos(d * mixer.theta_max / rings)
                            + b[d + rings - 1] * math.sin(d * mixer.theta_max / rings) for d in offsets]
                logits = torch.stack([q @ (wk @ polar[n, :, i, j] + bk) / math.sqrt(dim) + bb
                                      for (i, j), bb in zip(keys, bias, strict=True)])
                weights = torch.softmax(logits, 0)
                value = sum(w * (wv @ polar[n, :, i, j] + bv) for w, (i, j) in zip(weights, keys, strict=True))
                out[n, :, m, k] = attn.proj.weight @ value + attn.proj.bias
    return polar_inverse(out, size, None, radius)


@pytest.mark.parametrize(("strip", "cover", "size"), [("ring", "image", (8, 16)), ("ray", "disk", (16, 8)),
                                                      ("ray", "image", (8, 8))])
def test_radial_attention_matches_a_naive_loop(strip, cover, size):
    torch.manual_seed(1)
    block = RadialStripBlock(3, (4, 7), strip, cover=cover).double()
    y = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        expected = _naive_radial_attention(block, y)
        torch.testing.assert_close(block.radial_attention(y), expected, rtol=0, atol=1e-10)


def test_block_is_the_residual_sum_of_its_branches():
    torch.manual_seed(2)
    block = RadialStripBlock(4, (4, 16), "ring").double().eval()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    mid = x + block.radial_attention(block.norm1(x))
    torch.testing.assert_close(block(x), mid + block.ffn(block.norm2(mid)), rtol=0, atol=1e-12)


def _pixel_polar(size, centre):
    ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float64), torch.arange(size[1], dtype=torch.float64),
                            indexing="ij")
    return torch.hypot(ys - centre[0], xs - centre[1]), torch.atan2(ys - centre[0], xs - centre[1])


def test_ring_strips_only_mix_pixels_at_the_same_radius():
    """A bump at radius r0 changes the ring attention's output only within about two ring spacings of r0."""
    torch.manual_seed(3)
    block = RadialStripBlock(4, (8, 32), "ring", cover="disk").double()
    x = torch.randn(1, 4, 17, 17, dtype=torch.float64)
    bumped = x.clone()
    bumped[..., 8, 13] += 5.0
    with torch.no_grad():
        diff = (block.radial_attention(bumped) - block.radial_attention(x)).abs().amax(1)[0]
    rho, _ = _pixel_polar((17, 17), (8, 8))
    spacing = 8 / 7
    assert diff[(rho - 5).abs() > 2.5 * spacing].max() < 1e-12
    assert diff[(rho - 5).abs() < 0.5].max() > 1e-4
    assert diff[(rho - 5).abs() < 0.5].min() > 1e-6, "a ring carries the bump to all its azimuths"


def test_ray_strips_only_mix_pixels_at_the_same_azimuth():
    """A bump at azimuth phi0 changes the ray attention's output only near that azimuth (away from the centre)."""
    torch.manual_seed(4)
    block = RadialStripBlock(4, (8, 32), "ray", cover="disk").double()
    x = torch.randn(1, 4, 17, 17, dtype=torch.float64)
    bumped = x.clone()
    bumped[..., 8, 14] += 5.0
    with torch.no_grad():
        diff = (block.radial_attention(bumped) - block.radial_attention(x)).abs().amax(1)[0]
    rho, phi = _pixel_polar((17, 17), (8, 8))
    spacing = 8 / 7
    far = (phi.abs() > math.pi / 4) & (rho > 1.5 * spacing)
    assert diff[far].max() < 1e-12
    assert diff[(phi.abs() < 0.05) & (rho > 1) & (rho < 8)].min() > 1e-6, "a ray carries the bump to all radii"


def test_block_gradcheck():
    torch.manual_seed(5)
    block = RadialStripBlock(2, (3, 6), "ray").double()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


def _tiny(**kwargs):
    return RadialStripTransformer(dim=4, num_blocks=(1, 1, 2), num_refinement_blocks=1, img_size=32, **kwargs)


def test_decoder_blocks_alternate_rings_and_rays_and_the_encoder_has_no_attention():
    model = _tiny()
    assert [b.strip for b in model.decoder3] == ["ring", "ray"]
    assert all(not b.attention for b in (*model.encoder1, *model.encoder2, *model.encoder3))
    assert model.grids == [(16, 64), (8, 32), (4, 16)]


def test_forward_shapes_float32_tolerance_and_other_sizes():
    torch.manual_seed(0)
    model = _tiny().eval()
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        y = model(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        y64 = model.double()(x.double())
    torch.testing.assert_close(y, y64.float(), rtol=0, atol=1e-4)


def test_zero_initialised_output_makes_the_untrained_network_the_identity():
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(_tiny(zero_init_output=True)(x), x)
        assert not torch.equal(_tiny()(x), x)


@pytest.mark.parametrize(("shape", "match"), [((1, 3, 16, 16), "multiples of 32"), ((1, 3, 32, 40), "multiples of 32"),
                                              ((1, 1, 32, 32), "channels|3, H, W")])
def test_bad_images_raise(shape, match):
    with pytest.raises(ValueError, match=match):
        _tiny()(torch.rand(shape))


@pytest.mark.parametrize(("kwargs", "error"), [({"cover": "square"}, ValueError), ({"img_size": 48}, ValueError),
                                               ({"out_chans": 1}, ValueError), ({"num_blocks": (1, 1)}, TypeError)])
def test_bad_configs_raise(kwargs, error):
    args = dict(dim=4, num_blocks=(1, 1, 1), num_refinement_blocks=0, img_size=32) | kwargs
    with pytest.raises(error):
        RadialStripTransformer(**args)


def test_meta_device_construction_and_forward():
    with torch.device("meta"):
        model = timm.create_model("visattn_rst", pretrained=False)
        y = model(torch.empty(1, 3, 128, 128))
    assert y.shape == (1, 3, 128, 128) and y.device.type == "meta"
    assert all(p.device.type == "meta" for p in model.parameters())


def test_published_size_parameter_count():
    """The released layout (width 48, blocks 6-6-12, 4 refinement, FFN x3): 14,472,356 parameters; the paper's
    figure could not be read (published.py records None)."""
    assert count_params_meta("visattn_rst") == 14_472_356
    assert count_params_meta("visattn_rst", dim=24) < count_params_meta("visattn_rst") / 3
