"""The edits through ``visattn.lens.edit`` on a tiny random timm ViT (2 layers, dim 32, 4 heads, 32x32 image,
patch 8): neutral parameters leave the output unchanged; real parameters change exactly the targeted layers, heads
and rows, as seen by ``visattn.lens.capture`` nested inside the edit."""

from __future__ import annotations

import contextlib

import pytest
import timm
import torch

from visattn import lens
from visattn.lens.edits import (
    AffineAttentionScaling,
    AttentionReweighting,
    ConsistEditControl,
    GazeShiftAmplification,
    ImbalancedAttentionBoost,
    SoftPerturbedAttention,
    VisionHeadReinforcement,
    VisualAttentionRedistribution,
    VisualSystemModulation,
)

TOKENS = 17


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=4).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)


def forward(model, x, edits=None, inputs=None):
    with contextlib.ExitStack() as stack:
        if edits is not None:
            stack.enter_context(lens.edit(model, edits, inputs=inputs))
        recording = stack.enter_context(lens.capture(model, what=("probs",)))
        with torch.no_grad():
            out = model(x)
    return out, [recording.get("probs", layer).tensor for layer in range(2)]


def neutral_edits(other):
    return [
        VisualAttentionRedistribution(sink_tokens=[5], p=1.0, text_queries_only=False),
        ImbalancedAttentionBoost([0, 1, 2], [3], alpha=0.0, beta=0.0, rows="all"),
        VisionHeadReinforcement({"x": other}, alpha=1.0),
        GazeShiftAmplification(torch.ones(16), [0], query_ratio=1.0, rows="all"),
        SoftPerturbedAttention(0.0),
        ConsistEditControl([0], num_steps=1, consistency=0.0, mask=torch.ones(16)),
        VisualSystemModulation([0], visual_factor=1.0, system_factor=1.0),
        AttentionReweighting(1.0, offset_rows=TOKENS),
        AffineAttentionScaling(1.0),
    ]


@pytest.mark.parametrize("index", range(9))
def test_neutral_parameters_leave_the_model_unchanged(model, images, index):
    x, other = images
    edit = neutral_edits(other)[index]
    base_out, base_probs = forward(model, x)
    out, probs = forward(model, x, [edit], inputs={"x": x})
    torch.testing.assert_close(out, base_out, atol=1e-6, rtol=1e-6)
    for layer in range(2):
        torch.testing.assert_close(probs[layer], base_probs[layer], atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base_out, atol=1e-5, rtol=1e-5)


def changed_heads_rows(probs, base):
    return (probs != base).any(-1)


@pytest.mark.parametrize("make", [
    lambda: ImbalancedAttentionBoost([0, 5, 9], [12], rows=[16], layers=[0], heads=[1]),
    lambda: GazeShiftAmplification(torch.linspace(1, 9, 16), [0], rows=[16], layers=[0], heads=[1]),
    lambda: VisualSystemModulation([0], visual_factor=2.0, system_factor=0.3, rows=[16], layers=[0], heads=[1]),
    lambda: VisualAttentionRedistribution(sink_tokens=[0, 5], rho=1.0, min_visual_mass=0.0, text_queries_only=False,
                                          skip_first_layers=0, layers=[0], heads=[1]),
    lambda: AffineAttentionScaling(0.5, layers=[0], heads=[1]),
])
def test_real_parameters_change_exactly_the_targeted_layer_heads_and_rows(model, images, make):
    x, _ = images
    edit = make()
    _, base = forward(model, x)
    _, probs = forward(model, x, [edit])
    changed = changed_heads_rows(probs[0], base[0])
    assert changed[:, 1].any()
    assert not changed[:, [0, 2, 3]].any()
    rows = getattr(edit, "rows", "all")
    if rows != "all":
        assert not changed[:, :, :16].any()
    torch.testing.assert_close(probs[0].sum(-1), base[0].sum(-1), atol=1e-5, rtol=0)
    assert not torch.equal(probs[1], base[1])


def test_softpag_u_one_gives_identity_maps_on_the_chosen_heads(model, images):
    x, _ = images
    _, base = forward(model, x)
    _, probs = forward(model, x, [SoftPerturbedAttention(1.0, head_pairs=[(0, 1), (1, 3)])])
    eye = torch.eye(TOKENS).expand(2, TOKENS, TOKENS)
    torch.testing.assert_close(probs[0][:, 1], eye, atol=0, rtol=0)
    torch.testing.assert_close(probs[1][:, 3], eye, atol=0, rtol=0)
    assert torch.equal(probs[0][:, [0, 2, 3]], base[0][:, [0, 2, 3]])


def test_var_skips_the_last_layer_and_vhr_edits_outputs_not_maps(model, images):
    x, other = images
    base_out, base = forward(model, x)
    out, probs = forward(model, x, [VisualAttentionRedistribution(sink_tokens=[5], rho=1.0, min_visual_mass=0.0,
                                                                  text_queries_only=False, skip_first_layers=0,
                                                                  layers=[1])])
    assert torch.equal(out, base_out) and torch.equal(probs[1], base[1])
    vhr = VisionHeadReinforcement({"x": other}, layers=[1])
    out, probs = forward(model, x, [vhr], inputs={"x": x})
    assert torch.equal(probs[0], base[0]) and torch.equal(probs[1], base[1])
    assert not torch.allclose(out, base_out) and vhr.chosen[1].sum(-1).tolist() == [2, 2]


def test_consistedit_gives_the_target_the_source_vision_queries(model, images):
    x, _ = images
    with lens.capture(model, layers=0, what=("q",)) as plain, torch.no_grad():
        model(x)
    edit = ConsistEditControl([0], num_steps=2, mask=torch.zeros(16), layers=[0])
    with lens.edit(model, [edit]), lens.capture(model, layers=0, what=("q", "probs")) as edited, torch.no_grad():
        model(x)
    q, base_q = edited.get("q", 0).tensor, plain.get("q", 0).tensor
    assert torch.equal(q[0], base_q[0])
    assert torch.equal(q[1, :, 1:], base_q[0, :, 1:]) and torch.equal(q[1, :, 0], base_q[1, :, 0])


def test_edit_checks_heads_against_the_model(model):
    with pytest.raises(ValueError, match=r"heads \[4\] out of range"):
        with lens.edit(model, [SoftPerturbedAttention(heads=[4])]):
            pass
    with pytest.raises(ValueError, match=r"head_pairs \[\(0, 9\)\] out of range"):
        with lens.edit(model, [SoftPerturbedAttention(head_pairs=[(0, 9)])]):
            pass
