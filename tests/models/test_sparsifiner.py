"""visattn_sparsifiner_deit_small_patch16_224: timm's contract, the block against a naive float64 reading of the
released code (lim142857/Sparsifiner, ``src/models/sparsifiner.py``), the teacher's DeiT weights and the release's
checkpoint layout, the parameter count, digits training, bad input refused."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from contract import check_timm_contract, count_params_meta, digits_loss_falls, load_pretrained_file

from visattn.models.published import PUBLISHED
from visattn.models.sparsifiner import checkpoint_filter_fn, sparsifiner_mixers
from visattn.nn.sparsifiner import SparsifinerMixer

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "visattn_sparsifiner_deit_small_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
"""N = 16 + 1 tokens, ceil(0.25 * 17) = 5 keys per query."""


def test_timm_contract():
    model = check_timm_contract(NAME, 32, **{k: v for k, v in TINY.items() if k != "img_size"})
    mixers = sparsifiner_mixers(model)
    assert len(mixers) == 2
    assert {(m.num_tokens, m.keys_per_query, m.num_heads, m.head_dim) for m in mixers} == {(17, 5, 2, 16)}


def test_release_configuration():
    """DeiT-S (patch 16, 384 channels, 12 blocks of 6 heads) with the released predictor defaults at 224: N = 197,
    50 keys per query, P_n of 197 x 32, channels 64 -> 32, top-8 basis coefficients, threshold 0.02."""
    with torch.device("meta"):
        model = timm.create_model(NAME)
    mixers = sparsifiner_mixers(model)
    assert len(mixers) == 12 and len(model.blocks) == 12
    m = mixers[0]
    assert (m.num_heads, m.head_dim, m.num_tokens, m.keys_per_query) == (6, 64, 197, 50)
    assert tuple(m.proj_n.shape) == tuple(m.proj_back_n.shape) == (197, 32)
    assert (m.proj_q.out_features, m.basis_topk, m.basis_threshold, m.keep_rate) == (32, 8, 0.02, 0.25)
    assert model.blocks[0].attn.num_prefix_tokens == 1 and model.blocks[0].attn.qkv.bias is not None
    assert model.pretrained_cfg["hf_hub_id"] == "timm/deit_small_patch16_224.fb_in1k"


def test_parameter_count():
    """DeiT-S's 22,050,664 (timm's deit_small_patch16_224) plus, per block, the predictor's two 64 -> 32 linears
    (2 x 2,080) and P_n, P_back (2 x 197 x 32): 12 x 16,768 = 201,216. The paper's table could not be read here,
    so PUBLISHED holds no figure for it (None), as models/published.py requires."""
    assert count_params_meta(NAME) == count_params_meta("deit_small_patch16_224") + 12 * 16_768 == 22_251_880
    assert PUBLISHED[NAME].params_m is None


def _naive_block(block, x, basis_topk=8):
    """The released Block / Attention / MaskPredictor in eval mode, written out (x: (B, N, C), float64)."""
    attn, mixer = block.attn, block.attn.mixer
    b, n, c = x.shape
    h = attn.num_heads
    y = F.layer_norm(x, (c,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    qkv = (y @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    qc = q @ mixer.proj_q.weight.T + mixer.proj_q.bias
    kc = k @ mixer.proj_k.weight.T + mixer.proj_k.bias
    cheap = (qc @ (kc.transpose(-2, -1) @ mixer.proj_n)) * h ** -0.5
    coef = cheap[:, :, 1:].softmax(-1)
    top, idx = coef.topk(basis_topk, dim=-1)
    coef = torch.zeros_like(coef).scatter(-1, idx, top)
    basis = mixer.proj_back_n.T.abs()
    basis = torch.where(basis > 0.02, basis, torch.zeros_like(basis))
    approx = coef @ basis
    budget = math.ceil(0.25 * n)
    mask = torch.zeros_like(approx).scatter(-1, approx.topk(budget, dim=-1)[1], 1.0)
    mask = torch.cat([torch.ones(b, h, 1, n, dtype=x.dtype), mask], dim=2)
    scores = (q @ k.transpose(-2, -1)) * (c // h) ** -0.5
    weights = scores.masked_fill(mask == 0, float("-inf")).softmax(-1)
    x = x + ((weights @ v).transpose(1, 2).reshape(b, n, c) @ attn.proj.weight.T + attn.proj.bias)
    z = F.layer_norm(x, (c,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    return x + F.gelu(z @ block.mlp.fc1.weight.T + block.mlp.fc1.bias) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias


@pytest.mark.parametrize(("img_size", "backend"), [(24, "sparse"), (40, "dense"), (40, "sparse")])
def test_block_equals_the_released_formulas_float64(img_size, backend):
    """Every block of a random model (N = 9 + 1 and 25 + 1 tokens; P_back spread so that the 0.02 threshold bites)
    against the naive reading of the released code, float64, both execution backends."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, img_size=img_size, patch_size=8, embed_dim=24, depth=2, num_heads=3,
                              reduce_n_factor=1, backend=backend).double().eval()
    for mixer in sparsifiner_mixers(model):
        with torch.no_grad():
            mixer.proj_back_n.normal_(0.0, 0.05)
            mixer.proj_n.normal_(0.0, 0.5)
    n = (img_size // 8) ** 2 + 1
    x = torch.randn(2, n, 24, dtype=torch.float64)
    with torch.no_grad():
        for block in model.blocks:
            torch.testing.assert_close(block(x), _naive_block(block, x), atol=1e-10, rtol=1e-10)
            x = block(x)


def _teacher_file(tmp_path, **kwargs):
    torch.manual_seed(1)
    teacher = timm.create_model("deit_small_patch16_224", **kwargs).eval()
    path = tmp_path / "deit.pth"
    torch.save({"model": teacher.state_dict()}, path)
    return teacher, path


def test_starts_from_the_teachers_weights(tmp_path):
    """pretrained=True with a DeiT checkpoint (the official DeiT files wrap it in {"model": ...}): every DeiT key is
    the teacher's, the predictors keep their initialisation; with keep_rate=1 every key is kept and the student's
    logits equal the dense teacher's."""
    teacher, path = _teacher_file(tmp_path, **TINY)
    student = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), keep_rate=1.0,
                                **TINY).eval()
    own = student.state_dict()
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(own[key], value, atol=0, rtol=0, msg=key)
    assert {k for k in own if k not in teacher.state_dict()} == {
        f"blocks.{i}.attn.mixer.{p}" for i in range(2)
        for p in ("proj_q.weight", "proj_q.bias", "proj_k.weight", "proj_k.bias", "proj_n", "proj_back_n")}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=0)
        sparse = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY).eval()
        assert not torch.allclose(sparse(x), teacher(x), atol=1e-3)


def _release_layout(state):
    renames = {"proj_q": "proj_c_q", "proj_k": "proj_c_k", "proj_n": "proj_n", "proj_back_n": "proj_back_n"}
    out = {}
    for key, value in state.items():
        for ours, theirs in renames.items():
            key = key.replace(f".attn.mixer.{ours}.", f".attn.mask_predictor.{theirs}.")
            if key.endswith(f".attn.mixer.{ours}"):
                key = key.replace(f".attn.mixer.{ours}", f".attn.mask_predictor.{theirs}")
        out[key] = value
    return {"model": out}


def test_loads_the_release_layout(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model(NAME, **TINY).eval()
    state = _release_layout(source.state_dict())
    assert {"blocks.0.attn.mask_predictor.proj_c_q.weight", "blocks.1.attn.mask_predictor.proj_c_k.bias",
            "blocks.1.attn.mask_predictor.proj_n", "blocks.0.attn.mask_predictor.proj_back_n", "cls_token",
            "pos_embed", "head.weight"} <= set(state["model"])
    loaded = load_pretrained_file(NAME, state, tmp_path, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-6, rtol=0)
    assert checkpoint_filter_fn(state, loaded).keys() == loaded.state_dict().keys()


def test_release_layout_with_wrong_keys_lists_them(tmp_path):
    state = _release_layout(timm.create_model(NAME, **TINY).state_dict())["model"]
    state["blocks.0.attn.extra"] = torch.zeros(1)
    del state["blocks.1.mlp.fc1.bias"]
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*blocks\.1\.mlp\.fc1\.bias.*Unexpected.*extra"):
        load_pretrained_file(NAME, state, tmp_path, **TINY)


def test_bad_arguments():
    with pytest.raises(ValueError, match="keep_rate"):
        timm.create_model(NAME, keep_rate=0.0, **TINY)
    with pytest.raises(ValueError, match="num_tokens is set from img_size"):
        timm.create_model(NAME, num_tokens=10, **TINY)
    with pytest.raises(ValueError, match="dynamic_img_size"):
        timm.create_model(NAME, dynamic_img_size=True, **TINY)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        timm.create_model(NAME, **dict(TINY, img_size=36))
    with pytest.raises(ValueError, match="backend"):
        timm.create_model(NAME, backend="flash", **TINY)
    model = timm.create_model(NAME, **TINY)
    with pytest.raises((AssertionError, ValueError), match="(?i)input|size|height"):
        model(torch.randn(1, 3, 40, 40))


def test_mixer_is_sparsifiner():
    assert all(isinstance(b.attn.mixer, SparsifinerMixer) for b in timm.create_model(NAME, **TINY).blocks)


def test_digits_loss_falls():
    torch.manual_seed(0)
    model = timm.create_model(NAME, num_classes=10, **TINY)
    digits_loss_falls(model, 32, lr=3e-3)
