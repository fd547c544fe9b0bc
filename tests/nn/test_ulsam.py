"""ULSAM subspace attention against a per-subspace loop in float64; the MobileNet helper's report."""

from __future__ import annotations

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.nn import SubspaceAttention, add_ulsam
from visattn.nn.feature_maps import ULSAM_CONFIGS, count_flops
from visattn.testing import gradcheck_module, randomize_module

pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    return randomize_module(module, seed)


def bn_eval(z: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    return (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def naive_ulsam(m: SubspaceAttention, x: torch.Tensor) -> torch.Tensor:
    """F^_n = F_n + A_n F_n, A_n = softmax_hw(PW(maxpool3x3(DW(F_n)))), one subspace at a time, pixel loops for
    the max-pool."""
    b, c, h, wd = x.shape
    g = m.groups
    size = c // g
    official = m.variant == "official"
    outs = []
    for n in range(g):
        f = x[:, n * size:(n + 1) * size]
        dw = f * m.dw.weight[n * size:(n + 1) * size, 0, 0, 0][None, :, None, None]
        if official:
            dw = dw + m.dw.bias[n * size:(n + 1) * size][None, :, None, None]
            mean, var = m.dw_norm.running_mean[n * size:(n + 1) * size], m.dw_norm.running_var[n * size:(n + 1) * size]
            wt, bs = m.dw_norm.weight[n * size:(n + 1) * size], m.dw_norm.bias[n * size:(n + 1) * size]
            dw = torch.relu((dw - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
                            * wt[None, :, None, None] + bs[None, :, None, None])
        pooled = torch.empty_like(dw)
        for i in range(h):
            for j in range(wd):
                window = dw[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
                pooled[:, :, i, j] = window.amax(dim=(2, 3))
        pw = torch.einsum("c,bchw->bhw", m.pw.weight[n, :, 0, 0], pooled)
        if official:
            pw = pw + m.pw.bias[n]
            pw = torch.relu((pw - m.pw_norm.running_mean[n]) / torch.sqrt(m.pw_norm.running_var[n] + 1e-5)
                            * m.pw_norm.weight[n] + m.pw_norm.bias[n])
        e = torch.exp(pw - pw.flatten(1).amax(1)[:, None, None])
        a = e / e.flatten(1).sum(1)[:, None, None]
        outs.append(f + a[:, None] * f)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("variant", ["paper", "official"])
@settings(max_examples=8, deadline=None)
@given(groups=st.sampled_from([1, 2, 4]), per=st.integers(1, 3), h=st.integers(1, 6), wd=st.integers(1, 6),
       seed=st.integers(0, 99))
def test_matches_naive_float64(variant, groups, per, h, wd, seed):
    m = randomize(SubspaceAttention(groups * per, groups, variant).double(), seed)
    x = torch.randn(2, groups * per, h, wd, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(m(x), naive_ulsam(m, x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_float32(variant):
    m = randomize(SubspaceAttention(12, 3, variant))
    x = torch.randn(2, 12, 5, 7)
    torch.testing.assert_close(m(x), naive_ulsam(m.double(), x.double()).float(), atol=1e-5, rtol=1e-5)


def test_maps_sum_to_one_per_subspace():
    maps = SubspaceAttention(8, 4).attention_maps(torch.randn(3, 8, 5, 6))
    assert maps.shape == (3, 4, 5, 6)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(3, 4))


@pytest.mark.parametrize("m", [8, 24, 64])
def test_paper_form_has_2m_weights(m):
    assert sum(p.numel() for p in SubspaceAttention(m, 4).parameters()) == 2 * m
    # Released form: the same 2m weights, m + g biases, BN affine 2m + 2g.
    official = SubspaceAttention(m, 4, "official")
    assert sum(p.numel() for p in official.parameters()) == 2 * m + (m + 4) + 2 * (m + 4)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_gradcheck(variant):
    m = randomize(SubspaceAttention(4, 2, variant).double())
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck_module(m, x)


def test_meta_device():
    for variant in ("paper", "official"):
        m = SubspaceAttention(16, 4, variant, device="meta")
        assert m(torch.empty(2, 16, 5, 5, device="meta")).shape == (2, 16, 5, 5)


def test_bad_input():
    with pytest.raises(ValueError, match="channels=10 must be divisible by groups=4"):
        SubspaceAttention(10, 4)
    with pytest.raises(ValueError, match="variant"):
        SubspaceAttention(8, 4, "bn")
    with pytest.raises(ValueError, match="groups"):
        SubspaceAttention(8, 0)
    with pytest.raises(ValueError, match="x must be"):
        SubspaceAttention(8, 4)(torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize("key", ["mobilenetv1", "mobilenetv2"])
def test_mobilenet_helper_reports_parameter_and_flop_change(key):
    cfg = ULSAM_CONFIGS[key]
    with torch.device("meta"):
        model = timm.create_model(cfg.model)
    base = sum(p.numel() for p in model.parameters())
    blocks = [b for stage in model.blocks for b in stage]
    touched = [blocks[p - 1] for p in cfg.positions]
    model, report = add_ulsam(model, cfg.positions, cfg.groups, cfg.mode, input_size=(3, 64, 64))
    assert report.params_before == base
    ulsam = [m for m in model.modules() if isinstance(m, SubspaceAttention)]
    assert len(ulsam) == len(cfg.positions)
    added = sum(2 * m.channels for m in ulsam)
    removed = sum(p.numel() for b in touched for p in b.parameters()) if cfg.mode == "replace" else 0
    assert report.params_after == base + added - removed
    assert report.flops_after == count_flops(model, (3, 64, 64))
    if cfg.mode == "replace":
        assert report.param_change < -0.1 and report.flop_change < 0
    else:
        assert 0 < report.param_change < 1e-3 and report.flop_change > 0
    assert model(torch.empty(1, 3, 64, 64, device="meta")).shape == (1, 1000)


def test_mobilenet_helper_bad_positions():
    with torch.device("meta"):
        model = timm.create_model("mobilenetv2_100")
    with pytest.raises(ValueError, match="positions"):
        add_ulsam(model, (0,))
    with pytest.raises(ValueError, match="mode='replace' needs equal channels"):
        add_ulsam(model, (14,), mode="replace")
    with pytest.raises(ValueError, match="mode"):
        add_ulsam(model, (15,), mode="swap")
