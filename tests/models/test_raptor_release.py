"""visattn.models.raptor_release: a random Raptor written by this test in the OFFICIAL layout (KempnerInstitute/raptor:
its ``Raptor(blocks, thresholds)`` of ``Block`` modules, pickled whole as its trainer does), loaded through
``pretrained=True``, equals a written-out float64 loop of the official forward; every tensor lands where the mapping
says; missing, unexpected and misshapen entries are reported by name."""

from __future__ import annotations

import math
import pickle
import sys
import types

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import visattn.models  # noqa: F401  (registers visattn_raptor_*)
from visattn.models.raptor import PAPER_PHASES, RELEASE_FILES, Raptor
from visattn.models.raptor_release import (
    RELEASE_THRESHOLDS,
    RELEASE_URL,
    checkpoint_filter_fn,
    load_release,
    phases_from_thresholds,
    read_release,
    release_to_visattn,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, HEADS, CLASSES = 16, 2, 5
SHAPE = dict(img_size=28, patch_size=7, embed_dim=DIM, num_heads=HEADS)
"""16 patches, a class token and 4 registers (the DINOv2-reg layout), width 16."""


def _official_module(monkeypatch) -> types.SimpleNamespace:
    """Classes with the official names, attributes and parameter shapes (read from raptor/block.py and
    raptor/raptor.py, written here), put in ``sys.modules`` as ``block`` and ``raptor`` so that pickling records the
    class paths the release's files hold."""
    block_mod = types.ModuleType("block")
    raptor_mod = types.ModuleType("raptor")

    class SwiGLU(nn.Module):
        pass

    class LayerScale(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(dim))

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, swiglu: bool = True, t_scale: bool = True) -> None:
            super().__init__()
            hidden = 4 * dim
            self.t_scale = t_scale
            self.norm1 = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.ls1 = LayerScale(dim)
            self.norm2 = nn.LayerNorm(dim)
            if swiglu:
                self.mlp = nn.Sequential(nn.Linear(dim, 2 * hidden), SwiGLU(), nn.Linear(hidden, dim))
            else:
                self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            self.ls2 = LayerScale(dim)
            if t_scale:
                self.t_proj = nn.Sequential(nn.Linear(1, 16), nn.SiLU(), nn.Linear(16, 3 * dim))

    class Raptor(nn.Module):  # noqa: F811  (the release's class name)
        def __init__(self, blocks: list[nn.Module], thresholds: list[int]) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(blocks)
            self.thresholds = thresholds

    for cls, mod in ((SwiGLU, block_mod), (LayerScale, block_mod), (Block, block_mod), (Raptor, raptor_mod)):
        cls.__module__ = mod.__name__
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "block", block_mod)
    monkeypatch.setitem(sys.modules, "raptor", raptor_mod)
    return types.SimpleNamespace(Block=Block, Raptor=Raptor)


def _randomise(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.4)


def _official_raptor(monkeypatch, k: int, seed: int = 0, **block_kwargs) -> nn.Module:
    official = _official_module(monkeypatch)
    model = official.Raptor([official.Block(DIM, HEADS, **block_kwargs) for _ in range(k)],
                            list(RELEASE_THRESHOLDS[k]))
    _randomise(model, seed)
    return model


def _save_pickled(model: nn.Module, path, monkeypatch) -> None:
    """``torch.save(model)`` as the release's trainer does, then the official classes are made unimportable."""
    torch.save(model, path)
    monkeypatch.delitem(sys.modules, "block")
    monkeypatch.delitem(sys.modules, "raptor")


def _teacher(seed: int = 1) -> VisionTransformer:
    teacher = VisionTransformer(**SHAPE, depth=12, reg_tokens=4, no_embed_class=True, num_classes=0)
    _randomise(teacher, seed)
    return teacher.eval()


def _ln(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps) * weight + bias


def _official_block(sd: dict, i: int, x: torch.Tensor, t: float) -> torch.Tensor:
    """One official block (raptor/block.py, t_scale and SwiGLU) written out from its state dict, float64."""
    p = {k.removeprefix(f"blocks.{i}."): v.double() for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
    b, n, d = x.shape
    hd = d // HEADS
    hidden = p["t_proj.0.weight"][:, 0] * t + p["t_proj.0.bias"]
    gates = (hidden * torch.sigmoid(hidden)) @ p["t_proj.2.weight"].T + p["t_proj.2.bias"] + 1
    g1, g2, g3 = gates[:d], gates[d:2 * d], gates[2 * d:]
    h = _ln(x, p["norm1.weight"], p["norm1.bias"], 1e-5)
    qkv = h @ p["attn.in_proj_weight"].T + p["attn.in_proj_bias"]
    q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(b, n, HEADS, hd).transpose(1, 2) for j in range(3))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    mixed = ((weights / weights.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(b, n, d)
    attn = mixed @ p["attn.out_proj.weight"].T + p["attn.out_proj.bias"]
    x = x + g1 * p["ls1.gamma"] * attn
    h = _ln(x, p["norm2.weight"], p["norm2.bias"], 1e-5) @ p["mlp.0.weight"].T + p["mlp.0.bias"]
    a, c = h[..., :4 * d], h[..., 4 * d:]
    mlp = (a * torch.sigmoid(a) * c) @ p["mlp.2.weight"].T + p["mlp.2.bias"]
    x = x + g2 * p["ls2.gamma"] * mlp
    return g3 * x


def _official_forward(sd: dict, thresholds, teacher: VisionTransformer, head: dict, images: torch.Tensor):
    """The release's RaptorWrapper: DINOv2's tokens, steps t = 1..12 with the block of the first threshold >= t and
    time t, DINOv2's final norm, cat(cls, mean of the patch tokens after the 4 registers), the linear head."""
    teacher = teacher.double()
    with torch.no_grad():
        x = teacher._pos_embed(teacher.patch_embed(images.double()))
    for t in range(1, 13):
        i = next((j for j, thr in enumerate(thresholds) if t <= thr), len(thresholds))
        x = _official_block(sd, i, x, float(t))
    x = _ln(x, teacher.norm.weight.detach(), teacher.norm.bias.detach(), teacher.norm.eps)
    feats = torch.cat([x[:, 0], x[:, 1 + 4:].mean(1)], dim=-1)
    return feats @ head["weight"].double().T + head["bias"].double()


def test_thresholds_are_the_paper_phases():
    for k, thresholds in RELEASE_THRESHOLDS.items():
        assert phases_from_thresholds(thresholds) == PAPER_PHASES[k]
    with pytest.raises(ValueError, match="increase strictly"):
        phases_from_thresholds((7, 7))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_pretrained_equals_the_written_out_official_forward(k, tmp_path, monkeypatch):
    official = _official_raptor(monkeypatch, k, seed=k)
    sd = {name: v.detach().clone() for name, v in official.state_dict().items()}
    path = tmp_path / RELEASE_FILES[k]
    _save_pickled(official, path, monkeypatch)
    teacher = _teacher()
    generator = torch.Generator().manual_seed(7)
    head = {"weight": torch.randn(CLASSES, 2 * DIM, generator=generator),
            "bias": torch.randn(CLASSES, generator=generator)}
    model = timm.create_model(f"visattn_raptor{k}_base_patch14_reg4_dinov2", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), teacher=teacher, linear_head=head,
                              num_classes=CLASSES, **SHAPE).eval()
    assert model.phases == PAPER_PHASES[k]
    images = torch.randn(2, 3, 28, 28, generator=generator)
    expected = _official_forward(sd, RELEASE_THRESHOLDS[k], teacher, head, images)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected.float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.double()(images.double()), expected, atol=1e-10, rtol=1e-10)


def test_every_official_tensor_lands_where_the_mapping_says(tmp_path, monkeypatch):
    official = _official_raptor(monkeypatch, 3)
    sd = official.state_dict()
    path = tmp_path / "release.pt"
    _save_pickled(official, path, monkeypatch)
    read = read_release(path)
    assert set(read) == set(sd) and all(torch.equal(read[k], sd[k]) for k in sd)
    model = Raptor(PAPER_PHASES[3], **SHAPE, reg_tokens=4, block_norm_eps=1e-5)
    assert load_release(model, path) == [k for k in model.state_dict() if not k.startswith("recurrent_blocks.")]
    ours = model.state_dict()
    hidden = 4 * DIM
    for i in range(3):
        o, r = f"blocks.{i}.", f"recurrent_blocks.{i}."
        pairs = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
                 "norm2.bias": "norm2.bias", "attn.in_proj_weight": "attn.qkv.weight",
                 "attn.in_proj_bias": "attn.qkv.bias", "attn.out_proj.weight": "attn.proj.weight",
                 "attn.out_proj.bias": "attn.proj.bias", "ls1.gamma": "ls1.gamma", "ls2.gamma": "ls2.gamma",
                 "mlp.2.weight": "mlp.fc2.weight", "mlp.2.bias": "mlp.fc2.bias", "t_proj.0.weight": "gates.fc1.weight",
                 "t_proj.0.bias": "gates.fc1.bias", "t_proj.2.weight": "gates.fc2.weight",
                 "t_proj.2.bias": "gates.fc2.bias"}
        for theirs, mine in pairs.items():
            assert torch.equal(ours[r + mine], sd[o + theirs]), (theirs, mine)
        for kind in ("weight", "bias"):
            assert torch.equal(ours[f"{r}mlp.fc1_g.{kind}"], sd[f"{o}mlp.0.{kind}"][:hidden])
            assert torch.equal(ours[f"{r}mlp.fc1_x.{kind}"], sd[f"{o}mlp.0.{kind}"][hidden:])
    block_keys = {k for k in ours if k.startswith("recurrent_blocks.")}
    assert len(block_keys) == 3 * (len(pairs) + 4)


def test_missing_unexpected_and_misshapen_entries_are_named(monkeypatch):
    sd = dict(_official_raptor(monkeypatch, 3).state_dict())
    model = Raptor(PAPER_PHASES[3], **SHAPE, reg_tokens=4)
    with pytest.raises(ValueError, match=r"unset: \['recurrent_blocks.1.ls1.gamma'\]"):
        load_release(model, {k: v for k, v in sd.items() if k != "blocks.1.ls1.gamma"})
    with pytest.raises(ValueError, match=r"no place .*\['blocks.0.extra', 'dino.cls_token'\]"):
        load_release(model, dict(sd, **{"blocks.0.extra": torch.zeros(1), "dino.cls_token": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"no place .*blocks.0.extra"):
        checkpoint_filter_fn(dict(sd, **{"blocks.0.extra": torch.zeros(1)}), model)
    with pytest.raises(ValueError, match=r"unset: \['recurrent_blocks.2.norm1.weight'"):
        load_release(model, {k: v for k, v in sd.items() if not k.startswith("blocks.2.")})
    with pytest.raises(ValueError, match="lacks"):
        load_release(Raptor(PAPER_PHASES[2], **SHAPE, reg_tokens=4), sd)
    with pytest.raises(ValueError, match=r"wrong shape.*recurrent_blocks.0.norm1.weight: release \(16,\) vs model "
                                         r"\(24,\)"):
        load_release(Raptor(PAPER_PHASES[3], **dict(SHAPE, embed_dim=24)), sd)
    with pytest.raises(ValueError, match="unset.*gates"):
        load_release(model, _official_raptor(monkeypatch, 3, t_scale=False).state_dict())
    with pytest.raises(TypeError, match="not tensors"):
        read_release({"blocks.0.ls1.gamma": [1.0]})


def test_other_checkpoint_forms(tmp_path, monkeypatch):
    """A wrapper's state dict (``raptor.`` prefix, ``classifier``), a nested state dict, a block trained alone, GELU
    blocks without gates, a bare linear head."""
    sd = dict(_official_raptor(monkeypatch, 2, seed=3).state_dict())
    wrapped = {f"raptor.{k}": v for k, v in sd.items()}
    wrapped.update({"classifier.weight": torch.randn(CLASSES, 2 * DIM), "classifier.bias": torch.randn(CLASSES)})
    path = tmp_path / "wrapper.pt"
    torch.save({"state_dict": wrapped}, path)
    model = Raptor(PAPER_PHASES[2], **SHAPE, reg_tokens=4, num_classes=CLASSES, token_patch_head=True)
    load_release(model, path)
    assert torch.equal(model.head.weight, wrapped["classifier.weight"])
    assert torch.equal(model.recurrent_blocks[1].attn.qkv.weight, sd["blocks.1.attn.in_proj_weight"])
    head = {"weight": torch.randn(CLASSES, 2 * DIM), "bias": torch.randn(CLASSES)}
    load_release(model, head)
    assert torch.equal(model.head.bias, head["bias"])

    single = {k.removeprefix("blocks.1."): v for k, v in sd.items() if k.startswith("blocks.1.")}
    with pytest.raises(ValueError, match="needs phase=0..1"):
        release_to_visattn(single, model)
    load_release(model, single, phase=0)
    assert torch.equal(model.recurrent_blocks[0].ls2.gamma, single["ls2.gamma"])
    with pytest.raises(ValueError, match="phase must be in 0..1"):
        load_release(model, single, phase=2)

    gelu = _official_raptor(monkeypatch, 2, swiglu=False, t_scale=False)
    plain = Raptor(PAPER_PHASES[2], **SHAPE, mlp="gelu", time_gates=False)
    load_release(plain, gelu)
    assert torch.equal(plain.recurrent_blocks[0].mlp.fc1.weight, gelu.blocks[0].mlp[0].weight)
    with pytest.raises(ValueError, match="wrong shape"):
        load_release(Raptor(PAPER_PHASES[2], **SHAPE, time_gates=False), gelu)


def test_the_reader_runs_no_foreign_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"blocks.0.ls1.gamma": types.SimpleNamespace()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        read_release(path)


def test_pretrained_without_the_file_or_for_unreleased_sizes(tmp_path):
    with pytest.raises(FileNotFoundError, match=RELEASE_URL.split("?")[0]):
        timm.create_model("visattn_raptor2_base_patch14_reg4_dinov2", pretrained=True, **SHAPE)
    with pytest.raises(NotImplementedError, match="no Raptor weights were released for this teacher"):
        timm.create_model("visattn_raptor_small_patch16_224", pretrained=True)
    with pytest.raises(ValueError, match="only with pretrained=True"):
        timm.create_model("visattn_raptor2_base_patch14_reg4_dinov2", teacher=_teacher(), **SHAPE)
    model = timm.create_model("visattn_raptor2_base_patch14_reg4_dinov2", **SHAPE)
    assert model.pretrained_cfg["file"] == RELEASE_FILES[2] and "seed_1001_step_312500" in RELEASE_FILES[2]


def test_the_release_layout_of_the_registered_sizes():
    """Block LayerNorms at eps 1e-5 (the teacher's final norm keeps 1e-6), the DINOv2 linear-probe head on 2 D
    features; reset_classifier keeps it, another pooling turns it off; on the meta device too."""
    model = timm.create_model("visattn_raptor3_base_patch14_reg4_dinov2", num_classes=CLASSES, **SHAPE).eval()
    assert model.recurrent_blocks[0].norm1.eps == 1e-5 and model.norm.eps == 1e-6
    assert model.head.in_features == 2 * DIM and model.head_hidden_size == 2 * DIM
    tokens = torch.randn(2, 21, DIM)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True),
                               torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))
    model.reset_classifier(3)
    assert model.head.in_features == 2 * DIM and model.head.out_features == 3
    model.reset_classifier(0, "avg")
    assert not model.token_patch_head and model.forward_head(tokens).shape == (2, DIM)
    with torch.device("meta"):
        meta = timm.create_model("visattn_raptor2_base_patch14_reg4_dinov2", num_classes=CLASSES, **SHAPE)
    assert meta(torch.empty(1, 3, 28, 28, device="meta")).shape == (1, CLASSES)
    with pytest.raises(ValueError, match="token_patch_head=True needs class_token=True"):
        Raptor(PAPER_PHASES[2], **SHAPE, global_pool="avg", token_patch_head=True)
    with pytest.raises(ValueError, match="block_norm_eps must be"):
        Raptor(PAPER_PHASES[2], **SHAPE, block_norm_eps=0)
