"""Lens adapter for timm ViT-family attention: captured maps equal a recomputation, the model is left as it was."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers.attention import Attention
from timm.models.eva import Eva

from visattn import lens
from visattn.lens import STATE

DIM, HEADS, HEAD_DIM = 32, 4, 8


def tiny_vit(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(pretrained=False, img_size=32, patch_size=8, embed_dim=DIM, depth=2, num_heads=HEADS)
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kwargs}).eval()


def tiny_eva(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return Eva(img_size=32, patch_size=8, embed_dim=DIM, depth=2, num_heads=HEADS, use_rot_pos_emb=True,
               ref_feat_shape=(4, 4), **kwargs).eval()


def test_probs_logits_head_outputs_equal_recomputation_from_q_k_v():
    model = tiny_vit().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    block_inputs = []
    hook = model.blocks[1].register_forward_pre_hook(lambda m, args: block_inputs.append(args[0]))
    with lens.capture(model, what=("probs", "logits", "head_outputs", "q", "k", "v", "hidden")) as rec:
        model(x)
    hook.remove()
    for layer in (0, 1):
        q, k, v = (rec.get(name, layer).tensor for name in ("q", "k", "v"))
        logits = q @ k.transpose(-2, -1) * HEAD_DIM**-0.5
        torch.testing.assert_close(rec.get("logits", layer).tensor, logits)
        torch.testing.assert_close(rec.get("probs", layer).tensor, logits.softmax(-1))
        torch.testing.assert_close(rec.get("head_outputs", layer).tensor, logits.softmax(-1) @ v)
        assert rec.get("probs", layer).dims == ("batch", "head", "query", "key")
        assert rec.get("probs", layer).shape == {"batch": 2, "head": HEADS, "query": 17, "key": 17}
    assert torch.equal(rec.get("hidden", 1).tensor, block_inputs[0])


def test_q_k_v_are_the_modules_projections():
    model = tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    attn_inputs = []
    hook = model.blocks[0].attn.register_forward_pre_hook(lambda m, args: attn_inputs.append(args[0]))
    with lens.capture(model, layers=0, what=("q", "k", "v")) as rec:
        model(x)
    hook.remove()
    qkv = model.blocks[0].attn.qkv(attn_inputs[0]).reshape(1, 17, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
    for i, name in enumerate(("q", "k", "v")):
        torch.testing.assert_close(rec.get(name, 0).tensor, qkv[i])


def test_capture_leaves_outputs_unchanged_and_restores_fused_attention():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert all(block.attn.fused_attn for block in model.blocks)
        with lens.capture(model, layers=[1]) as rec:
            assert model.blocks[0].attn.fused_attn and "forward" not in model.blocks[0].attn.__dict__
            assert not model.blocks[1].attn.fused_attn and "forward" in model.blocks[1].attn.__dict__
            out = model(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert rec.layers == (1,)
    for block in model.blocks:
        assert block.attn.fused_attn
        assert "forward" not in block.attn.__dict__
        assert "_visattn_lens_route" not in block.attn.__dict__


def test_restored_after_an_error_inside_the_context():
    model = tiny_vit()
    with pytest.raises(RuntimeError, match="boom"), lens.capture(model):
        raise RuntimeError("boom")
    assert all(block.attn.fused_attn and "forward" not in block.attn.__dict__ for block in model.blocks)
    assert STATE.recorders == [] and STATE.edits == []


def test_grid_prefix_and_hidden_in_the_call(calls):
    model = tiny_vit(reg_tokens=2, dynamic_img_size=True)
    with torch.no_grad(), lens.capture(model):
        model(torch.randn(1, 3, 32, 24))
    assert [c.layer for c in calls] == [0, 1]
    for call in calls:
        assert call.grid == (4, 3) and call.num_prefix_tokens == 3
        assert call.hidden.shape == (1, 15, DIM) and call.image_tokens is None
    assert calls[0].name == "blocks.0.attn"


@pytest.mark.parametrize("kwargs", [{}, {"attn_type": "rope", "num_kv_heads": 2, "qkv_fused": False}],
                         ids=["eva-attention", "attention-rope-gqa"])
def test_rotary_attention_probs_equal_recomputation(kwargs):
    model = tiny_eva(**kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        with lens.capture(model, what=("probs", "q", "k", "v")) as rec:
            out = model(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for layer in (0, 1):
        q, k = rec.get("q", layer).tensor, rec.get("k", layer).tensor
        assert k.shape[1] == HEADS
        expected_probs = (q @ k.transpose(-2, -1) * HEAD_DIM**-0.5).softmax(-1)
        torch.testing.assert_close(rec.get("probs", layer).tensor, expected_probs)
    if kwargs:
        v = rec.get("v", 0).tensor
        assert torch.equal(v[:, 0], v[:, 1]) and torch.equal(v[:, 2], v[:, 3])


@pytest.mark.parametrize("mode", ["bool", "additive", "causal"])
def test_attention_masks_are_kept(mode):
    torch.manual_seed(1)
    attn = Attention(DIM, num_heads=HEADS).eval()
    x = torch.randn(2, 7, DIM)
    allowed = torch.rand(7, 7) > 0.3
    allowed.fill_diagonal_(True)
    kwargs = {"bool": {"attn_mask": allowed}, "additive": {"attn_mask": torch.randn(2, 1, 7, 7)},
              "causal": {"is_causal": True}}[mode]
    with torch.no_grad():
        expected = attn(x, **kwargs)
        with lens.capture(attn, what=("probs",)) as rec:
            out = attn(x, **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    probs = rec.get("probs", 0).tensor
    forbidden = {"bool": ~allowed, "additive": torch.zeros(7, 7, dtype=torch.bool),
                 "causal": torch.ones(7, 7, dtype=torch.bool).triu(1)}[mode]
    assert torch.all(probs[..., forbidden] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, HEADS, 7))


def test_attention_dropout_in_training_mode_is_refused():
    model = tiny_vit(attn_drop_rate=0.1).train()
    with pytest.raises(ValueError, match=r"dropout p=0.1.*model.eval\(\)"), lens.capture(model):
        model(torch.randn(1, 3, 32, 32))
    assert all("forward" not in block.attn.__dict__ for block in model.blocks)


def test_gradients_flow_through_the_lens():
    model = tiny_vit().double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    grad_fused = torch.autograd.grad(model(x).sum(), x)[0]
    with lens.capture(model):
        grad_lens = torch.autograd.grad(model(x).sum(), x)[0]
    torch.testing.assert_close(grad_lens, grad_fused)
