"""visattn_infvit_linear_patch16_224: timm's contract, the Linear-InfSA block against a naive float64 reading of the
released ``linear_infsa`` (giorgioroffo/infinite-self-attention, ``infsa/core.py``), the parameter count inferred from
the published ones, the layout of a model converted by the release's ``infsa.convert``, digits, bad input."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from contract import check_timm_contract, count_params_meta, digits_loss_falls

from visattn.models.infvit import checkpoint_filter_fn
from visattn.models.published import PUBLISHED
from visattn.nn.infsa import LinearInfSAMixer

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "visattn_infvit_linear_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=4, representation_size=24)


def test_timm_contract():
    model = check_timm_contract(NAME, 32, **{k: v for k, v in TINY.items() if k != "img_size"})
    assert len(model.blocks) == 4
    assert all(isinstance(b.attn.mixer, LinearInfSAMixer) for b in model.blocks)
    assert model.head_hidden_size == model.num_features == 24


def test_configuration():
    """4 blocks of 1024 channels in 16 heads, patch 16, MLP 4096, class token, pre-logits 1024 -> 1024 tanh."""
    with torch.device("meta"):
        model = timm.create_model(NAME)
    assert len(model.blocks) == 4 and model.embed_dim == 1024 and model.patch_embed.patch_size == (16, 16)
    assert {(b.attn.num_heads, b.attn.head_dim, b.mlp.fc1.out_features) for b in model.blocks} == {(16, 64, 4096)}
    assert tuple(model.representation.fc.weight.shape) == (1024, 1024)
    assert isinstance(model.representation.act, torch.nn.Tanh)
    assert model.head.in_features == 1024 and model.num_prefix_tokens == 1


def test_parameter_count_is_the_published_one():
    """The README's Linear InfViT 4L: 53.5 M. Ours: a 4-layer ViT-L-width ViT (timm's count 52,402,152) + the
    pre-logits layer (1,049,600) + one rho per block = 53,451,756, 0.1 % from 53.5 M. Without the pre-logits layer
    the count is timm's plus the four rhos."""
    count = count_params_meta(NAME)
    assert count == count_params_meta("vit_large_patch16_224", depth=4) + 1024 * 1024 + 1024 + 4 == 53_451_756
    assert abs(count / 1e6 - PUBLISHED[NAME].params_m) <= 0.001 * PUBLISHED[NAME].params_m
    assert count_params_meta(NAME, representation_size=0) == 52_402_152 + 4


def _naive_block(block, x):
    """Pre-norm block with the released linear_infsa written out with sums (q, k scaled by d^-1/2 first; eps 1e-6)."""
    attn = block.attn
    b, n, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    y = F.layer_norm(x, (c,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    qkv = (y @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * d ** -0.5, qkv[1] * d ** -0.5, qkv[2]
    rho = 1 / (1 + torch.exp(-attn.mixer.rho_logit))
    out = torch.empty(b, h, n, d, dtype=x.dtype)
    for bi in range(b):
        for hi in range(h):
            energy = torch.stack([q[bi, hi, t].square().sum().sqrt() for t in range(n)])
            w = energy / (energy.sum() + 1e-6)
            q_bar = sum(w[t] * q[bi, hi, t] for t in range(n))
            a = torch.stack([torch.clamp((q_bar * k[bi, hi, j]).sum(), min=0) for j in range(n)])
            a = a / (a.sum() + 1e-6)
            out[bi, hi] = rho * sum(a[j] * v[bi, hi, j] for j in range(n))
    x = x + (out.transpose(1, 2).reshape(b, n, c) @ attn.proj.weight.T + attn.proj.bias)
    z = F.layer_norm(x, (c,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    return x + F.gelu(z @ block.mlp.fc1.weight.T + block.mlp.fc1.bias) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias


@pytest.mark.parametrize(("img_size", "heads"), [(24, 3), (40, 2)])
def test_block_equals_the_released_formula_float64(img_size, heads):
    """Every block (N = 9 + 1 and 25 + 1 tokens, odd head counts, random rho) against the naive reading, float64;
    every token gets the same attention output."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, img_size=img_size, patch_size=8, embed_dim=6 * heads, num_heads=heads,
                              representation_size=0).double().eval()
    for block in model.blocks:
        block.attn.mixer.rho_logit.data.uniform_(-2, 2)
    x = torch.randn(2, (img_size // 8) ** 2 + 1, 6 * heads, dtype=torch.float64)
    with torch.no_grad():
        for block in model.blocks:
            expected = _naive_block(block, x)
            torch.testing.assert_close(block(x), expected, atol=1e-10, rtol=1e-10)
            mixed = expected - x
            assert not torch.allclose(mixed[:, 0], mixed[:, 1])  # the MLP differs per token, the attention does not
            x = expected


def test_rho_trains():
    """The release reads rho with .item() (no gradient); here every block's rho_logit gets one."""
    model = timm.create_model(NAME, **TINY)
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert all(b.attn.mixer.rho_logit.grad is not None and b.attn.mixer.rho_logit.grad != 0 for b in model.blocks)


def _release_layout(state):
    """Our state dict as a timm ViT converted by the release's ``infsa.convert`` holds it: per block
    ``attn.{q,k,v,out}_proj`` (InfSAAttention's separate projections) and ``attn.rho_logit``."""
    out = {}
    for key, value in state.items():
        if key.endswith(".attn.qkv.weight") or key.endswith(".attn.qkv.bias"):
            prefix, kind = key.rsplit(".qkv.", 1)
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"{prefix}.{name}_proj.{kind}"] = part.clone()
            continue
        out[key.replace(".attn.proj.", ".attn.out_proj.").replace(".attn.mixer.rho_logit", ".attn.rho_logit")] = value
    return {"state_dict": out}


def test_loads_the_release_layout(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model(NAME, **TINY).eval()
    for block in source.blocks:
        block.attn.mixer.rho_logit.data.uniform_(-1, 1)
    state = _release_layout(source.state_dict())
    assert {"blocks.0.attn.q_proj.weight", "blocks.3.attn.v_proj.bias", "blocks.2.attn.out_proj.weight",
            "blocks.1.attn.rho_logit", "representation.fc.weight", "head.weight"} <= set(state["state_dict"])
    assert not any(".qkv." in k for k in state["state_dict"])
    path = tmp_path / "infvit.pth"
    torch.save(state, path)
    loaded = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-6, rtol=0)
    assert checkpoint_filter_fn(state, loaded).keys() == loaded.state_dict().keys()


def test_release_layout_missing_a_projection():
    model = timm.create_model(NAME, **TINY)
    state = _release_layout(model.state_dict())["state_dict"]
    del state["blocks.2.attn.k_proj.bias"]
    with pytest.raises(ValueError, match=r"q/k/v.*blocks\.2\.attn"):
        checkpoint_filter_fn(state, model)


def test_bad_arguments():
    with pytest.raises(ValueError, match="representation_size"):
        timm.create_model(NAME, **dict(TINY, representation_size=-1))
    with pytest.raises(ValueError, match="rho"):
        timm.create_model(NAME, rho=1.5, **TINY)
    with pytest.raises(ValueError, match="attn_layer"):
        timm.create_model(NAME, attn_layer="x", **TINY)
    model = timm.create_model(NAME, **TINY)
    with pytest.raises(ValueError, match="x must be an image batch"):
        model(torch.randn(1, 1, 32, 32))


def test_digits_loss_falls():
    """Linear-InfSA mixes tokens only through one pooled vector per head and layer, and learns slower than softmax
    attention here: 30 steps (not 20), without the tanh pre-logits layer."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, num_classes=10, **dict(TINY, representation_size=0))
    digits_loss_falls(model, 32, steps=30, lr=3e-3)
