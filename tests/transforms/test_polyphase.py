"""Adaptive polyphase anchoring (arXiv 2306.07470): norms and anchor against loops, tie-break, shift invariance of a
pooled patch embedding under 200 random circular shifts, exact equivariance of window / subsampled attention,
timm ViT and Swin conversion, gradients, meta device, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.transforms import (
    AnchoredSubsampledAttention,
    AnchoredWindowAttention,
    CircularPEG,
    PolyphaseAnchor,
    ShiftEquivariantPatchEmbed,
    anchored_window_partition,
    anchored_window_reverse,
    make_shift_equivariant,
    polyphase_anchor,
    polyphase_index,
    polyphase_norms,
    polyphase_unanchor,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=25, deadline=None)
@given(ph=st.integers(1, 3), pw=st.integers(1, 3), gh=st.integers(1, 4), gw=st.integers(1, 4),
       channels_last=st.booleans(), seed=st.integers(0, 10_000))
def test_norms_index_and_anchor_match_loops(ph, pw, gh, gw, channels_last, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, gh * ph, gw * pw, dtype=torch.float64, generator=g)
    xin = x.permute(0, 2, 3, 1) if channels_last else x
    norms = polyphase_norms(xin, (ph, pw), channels_last)
    for b in range(3):
        ref = torch.tensor([[x[b, :, i::ph, j::pw].pow(2).sum() for j in range(pw)] for i in range(ph)],
                           dtype=torch.float64)
        torch.testing.assert_close(norms[b], ref, rtol=1e-12, atol=1e-12)
    anchored, shift = polyphase_anchor(xin, (ph, pw), channels_last=channels_last)
    for b in range(3):
        flat = int(norms[b].flatten().argmax())
        assert shift[b].tolist() == [flat // pw, flat % pw]
        rolled = torch.roll(x[b], (-(flat // pw), -(flat % pw)), (-2, -1))
        got = anchored[b].permute(2, 0, 1) if channels_last else anchored[b]
        assert torch.equal(got, rolled)
    assert torch.equal(polyphase_unanchor(anchored, shift, channels_last), xin)


def test_constant_image_gives_a_deterministic_anchor():
    for value in (0.0, 1.0, -3.5):
        x = torch.full((2, 3, 8, 12), value)
        assert polyphase_index(x, 4).tolist() == [[0, 0], [0, 0]]
    stripes = torch.zeros(1, 1, 6, 6)
    stripes[..., 1::3] = 1.0  # columns 1 and 4: phases (i, 1) tie for every i; the first row wins
    assert polyphase_index(stripes, 3).tolist() == [[0, 1]]
    near = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    near[..., 1, 1] += 1e-9  # phase (1, 1) larger by round-off only
    assert polyphase_index(near, 2).tolist() == [[1, 1]]
    assert polyphase_index(near, 2, tie_tol=1e-6).tolist() == [[0, 0]]


def test_patch_embedding_pooled_output_is_invariant_under_200_circular_shifts():
    torch.manual_seed(0)
    embed = ShiftEquivariantPatchEmbed(4, 3, 16).double()
    x = torch.randn(2, 3, 12, 20, dtype=torch.float64)
    ref = embed(x).mean(dim=1)
    plain = torch.nn.Conv2d(3, 16, 4, stride=4).double()
    worst, plain_worst = 0.0, 0.0
    for _ in range(200):
        s = (int(torch.randint(12, ())), int(torch.randint(20, ())))
        shifted = torch.roll(x, s, (-2, -1))
        worst = max(worst, (embed(shifted).mean(dim=1) - ref).abs().max().item())
        plain_worst = max(plain_worst, (plain(shifted).mean(dim=(2, 3)) - plain(x).mean(dim=(2, 3))).abs().max().item())
    # identical up to the order of the mean's additions: measured 1.1e-16 in float64
    assert worst < 1e-13
    assert plain_worst > 1e-3  # the un-anchored embedding is not invariant


def _window_model():
    torch.manual_seed(1)
    peg, attn = CircularPEG(8).double(), AnchoredWindowAttention(8, 2, 4).double()

    def model(x):  # (B, H, W, C) -> (B, H, W, C)
        x = peg(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + attn(x)

    return model


def test_window_attention_model_is_exactly_shift_equivariant():
    model = _window_model()
    x = torch.randn(2, 12, 16, 8, dtype=torch.float64)
    ref = model(x)
    for _ in range(30):
        s = (int(torch.randint(12, ())), int(torch.randint(16, ())))
        out = model(torch.roll(x, s, (1, 2)))
        # measured: bit-identical (0) over the 30 shifts; the tolerance only allows for other BLAS builds
        torch.testing.assert_close(out, torch.roll(ref, s, (1, 2)), rtol=0, atol=1e-13)


def test_window_attention_equals_per_window_attention_after_anchoring():
    torch.manual_seed(2)
    attn = AnchoredWindowAttention(8, 2, (3, 4)).double()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    anchored, shift = polyphase_anchor(x, (3, 4), channels_last=True)
    ref = torch.empty_like(x)
    for b in range(2):
        for i in range(0, 6, 3):
            for j in range(0, 8, 4):
                win = anchored[b, i:i + 3, j:j + 4].reshape(12, 8)
                q, k, v = attn.qkv(win).reshape(12, 3, 2, 4).permute(1, 2, 0, 3)
                w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
                ref[b, i:i + 3, j:j + 4] = attn.proj((w @ v).transpose(0, 1).reshape(12, 8)).reshape(3, 4, 8)
    torch.testing.assert_close(attn(x), polyphase_unanchor(ref, shift, channels_last=True), rtol=0, atol=1e-12)
    windows, shift2 = anchored_window_partition(x, (3, 4))
    assert windows.shape == (2 * 2 * 2, 12, 8)
    assert torch.equal(anchored_window_reverse(windows, (3, 4), (6, 8), shift2), x)


def test_subsampled_attention_is_exactly_shift_equivariant():
    torch.manual_seed(3)
    attn = AnchoredSubsampledAttention(8, 2, sr_ratio=2).double()
    x = torch.randn(2, 6, 10, 8, dtype=torch.float64)
    ref = attn(x)
    for _ in range(20):
        s = (int(torch.randint(6, ())), int(torch.randint(10, ())))
        # measured max 2.2e-16 (the order of the reduced tokens changes the softmax sums)
        torch.testing.assert_close(attn(torch.roll(x, s, (1, 2))), torch.roll(ref, s, (1, 2)), rtol=0, atol=1e-13)


def test_timm_vit_and_swin_become_shift_invariant():
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(4)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    swin = SwinTransformer(img_size=16, patch_size=2, window_size=4, embed_dim=8, depths=(2, 2), num_heads=(2, 2),
                           num_classes=3)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    shifts = [(1, 3), (5, 2), (7, 7), (0, 1)]
    for model in (vit.double().eval(), swin.double().eval()):
        before = max((model(torch.roll(x, s, (-2, -1))) - model(x)).abs().max().item() for s in shifts)
        assert before > 1e-4  # not invariant before the conversion
        make_shift_equivariant(model)
        if isinstance(model, VisionTransformer):
            torch.nn.init.normal_(model.blocks[0].peg.proj.weight)  # a non-trivial PEG
        ref = model(x)
        for s in shifts:  # measured max 1.1e-16 (ViT), 1.4e-17 (Swin); before the conversion 3.8e-2, 5.3e-2
            torch.testing.assert_close(model(torch.roll(x, s, (-2, -1))), ref, rtol=0, atol=1e-12)
    assert vit.pos_embed is None and "blocks.0.peg.proj.weight" in vit.state_dict()
    with pytest.raises(ValueError, match="already converted"):
        make_shift_equivariant(vit)
    with pytest.raises(TypeError, match="VisionTransformer or SwinTransformer"):
        make_shift_equivariant(torch.nn.Linear(2, 2))


def test_gradients():
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: polyphase_anchor(t, 2)[0], (x,))
    attn = AnchoredWindowAttention(4, 2, 2).double()
    y = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attn, (y,))
    embed = ShiftEquivariantPatchEmbed(2, 2, 3).double()
    assert torch.autograd.gradcheck(embed, (x,))


def test_meta_device_and_module():
    anchor = PolyphaseAnchor(2)
    x = torch.empty(2, 3, 8, 6, device="meta")
    assert anchor(x).shape == (2, 3, 8, 6) and anchor(x).device.type == "meta"
    anchored, shift = anchor.anchor(x)
    assert shift.shape == (2, 2) and anchor.unanchor(anchored, shift).shape == x.shape
    attn = AnchoredWindowAttention(8, 2, 4).to("meta")
    assert attn(torch.empty(1, 8, 8, 8, device="meta")).shape == (1, 8, 8, 8)
    assert "p=(2, 2)" in repr(anchor)


def test_padding_and_errors():
    x = torch.randn(1, 2, 5, 7)
    with pytest.raises(ValueError, match=r"p=\(2, 2\) must divide the spatial size \(5, 7\) of x unless pad=True"):
        polyphase_anchor(x, 2)
    anchored, shift = polyphase_anchor(x, 2, pad=True)
    assert anchored.shape == (1, 2, 6, 8)
    torch.testing.assert_close(polyphase_unanchor(anchored, shift)[..., :5, :7], x)
    with pytest.raises(ValueError, match="p must be >="):
        PolyphaseAnchor(0)
    with pytest.raises(ValueError, match="tie_tol must be"):
        polyphase_index(torch.zeros(1, 1, 2, 2), 2, tie_tol=1.5)
    with pytest.raises(ValueError, match=r"x must be shaped \(B, C, H, W\)"):
        polyphase_anchor(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="dim=6 must be divisible by num_heads=4"):
        AnchoredWindowAttention(6, 4, 2)
    with pytest.raises(ValueError, match="kernel_size must be an odd int"):
        CircularPEG(4, kernel_size=2)
    with pytest.raises(ValueError, match="shift must be a"):
        polyphase_unanchor(torch.zeros(2, 1, 2, 2), torch.zeros(1, 2, dtype=torch.long))
