"""visattn_vit_*: timm's contract, the same logits as timm's ViT with mixer="softmax" (same weights), timm's
checkpoint loaded by pretrained=True, any mixer, bad arguments refused."""

from __future__ import annotations

import pytest
import timm
import torch
from contract import check_lens_cli, check_timm_contract, count_params_meta, digits_loss_falls, load_pretrained_file

from visattn.models.vit import TIMM_COUNTERPARTS
from visattn.nn import Attention

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(patch_size=8, depth=2)


@pytest.mark.parametrize(("mixer", "kwargs"), [("softmax", {}), ("neighborhood", {"kernel_size": 3})])
def test_timm_contract(mixer, kwargs):
    model = check_timm_contract("visattn_vit_tiny_patch16_224", 32, mixer=mixer, **TINY, **kwargs)
    assert all(isinstance(block.attn, Attention) for block in model.blocks)
    assert model.blocks[0].attn.mixer.__class__.__name__ != ""


@pytest.mark.parametrize("name", sorted(TIMM_COUNTERPARTS))
def test_parameter_count_equals_timm_and_the_paper(name):
    """ViT paper / DeiT table: Ti 5.7 M, S 22 M, B 86 M; timm counts 5,717,416 / 22,050,664 / 86,567,656."""
    assert count_params_meta(name) == count_params_meta(TIMM_COUNTERPARTS[name])


@pytest.mark.parametrize("img_size", [32, 48])
def test_softmax_equals_timm_with_the_same_weights(img_size):
    """fp32, eval: logits and input gradients within 1e-4 of timm's ViT holding the same state dict."""
    kwargs = dict(img_size=img_size, **TINY, num_classes=7)
    torch.manual_seed(0)
    ours = timm.create_model("visattn_vit_tiny_patch16_224", **kwargs).eval()
    theirs = timm.create_model("vit_tiny_patch16_224", **kwargs).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, img_size, img_size)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-4, rtol=0)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-4, rtol=1e-4)


def test_pretrained_loads_a_timm_checkpoint(tmp_path):
    """A randomly initialised timm ViT saved to a file, loaded by pretrained=True through pretrained_cfg_overlay:
    the same logits; with a mixer that has parameters of its own, those keep their initialisation."""
    kwargs = dict(img_size=32, **TINY)
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", **kwargs).eval()
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    overlay = dict(file=str(path))
    loaded = timm.create_model("visattn_vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                               **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)
    gated = timm.create_model("visattn_vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                              mixer="hedgehog", **kwargs)
    assert any(".attn.mixer." in key for key in gated.state_dict())
    torch.testing.assert_close(gated.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)


def test_pretrained_with_keys_that_do_not_match_lists_them(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("vit_tiny_patch16_224", img_size=32, **TINY).state_dict()
    state["blocks.0.attn.extra"] = torch.zeros(1)
    del state["blocks.1.attn.proj.bias"]
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*blocks\.1\.attn\.proj\.bias.*Unexpected key.*extra"):
        load_pretrained_file("visattn_vit_tiny_patch16_224", state, tmp_path, img_size=32, **TINY)


def test_mixer_keywords_reach_the_mixer_and_bad_ones_are_refused():
    model = timm.create_model("visattn_vit_tiny_patch16_224", img_size=32, mixer="neighborhood", kernel_size=3,
                              **TINY)
    assert model.mixer == "neighborhood"
    with pytest.raises(TypeError, match="kernel_sise"):
        timm.create_model("visattn_vit_tiny_patch16_224", img_size=32, mixer="neighborhood", kernel_sise=3, **TINY)
    with pytest.raises(ValueError, match="attn_layer"):
        timm.create_model("visattn_vit_tiny_patch16_224", attn_layer="diff", **TINY)
    with pytest.raises(TypeError, match="mixer must be a registry name"):
        timm.create_model("visattn_vit_tiny_patch16_224", mixer=3, **TINY)


def test_tiny_vit_learns_digits():
    torch.manual_seed(0)
    model = timm.create_model("visattn_vit_tiny_patch16_224", img_size=32, num_classes=10, embed_dim=64, num_heads=2,
                              **TINY)
    losses = digits_loss_falls(model, 32)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("mixer", ["softmax", "neighborhood,kernel_size=3"])
def test_lens_cli_reports_on_the_model(tmp_path, mixer):
    data = check_lens_cli("visattn_vit_tiny_patch16_224", tmp_path,
                          f"img_size=32,patch_size=8,embed_dim=32,depth=2,num_heads=4,mixer={mixer}", min_layers=2)
    assert all(set(values) == {"0", "1"} for values in data["per_layer"].values())
    assert any(name.startswith("mean attention distance") for name in data["per_layer"])


@pytest.mark.parametrize(("mixer", "kwargs"), [("softmax", {}), ("neighborhood", {"kernel_size": 3})])
def test_traces_as_one_graph(mixer, kwargs):
    """torch.compile(fullgraph=True) traces the whole model without a graph break (dynamo with the eager backend:
    the trace is what is tested, not inductor's code generation) and computes the eager logits."""
    torch.manual_seed(0)
    model = timm.create_model("visattn_vit_tiny_patch16_224", img_size=32, embed_dim=32, num_heads=2, mixer=mixer,
                              **TINY, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="eager")(x), model(x))
