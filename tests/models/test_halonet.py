"""visattn_halonet*: timm's model contract, same logits and gradients as timm's HaloNets on the same weights,
timm's parameter counts, timm checkpoints through pretrained=True, image sizes and bad input refused, training."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from contract import check_timm_contract, count_params_meta, digits_loss_falls
from timm.layers import ConvNormAct
from timm.layers.halo_attn import HaloAttn
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

import visattn.models  # noqa: F401
from visattn.bench.op_log import logged_ops
from visattn.models.halonet import FoldedConvNormAct
from visattn.nn.halo import HaloAttention
from visattn.testing import randomize_module

TIMM_NAMES = ("halonet26t", "sehalonet33ts", "halonet50ts")


def tiny_cfg(block_size: int = 4, halo_size: int = 1, self_attn_layer: str = "halo") -> ByoModelCfg:
    """A three-stage HaloNet: a bottleneck stage, then halo attention (two heads) with a strided first layer."""
    return ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="bottle", d=1, c=32, s=1, gs=0, br=0.25),
            ByoBlockCfg(type="self_attn", d=2, c=64, s=2, gs=0, br=0.25),
            ByoBlockCfg(type="self_attn", d=1, c=96, s=2, gs=0, br=0.25),
        ),
        stem_chs=16, stem_type="tiered", stem_pool="maxpool",
        self_attn_layer=self_attn_layer,
        self_attn_kwargs=dict(block_size=block_size, halo_size=halo_size, num_heads=2),
    )


def _pair(cfg_kwargs: dict | None = None, seed: int = 0, **model_kwargs):
    """timm's ByobNet with timm's HaloAttn and random weights, and visattn's HaloNet holding the same weights."""
    cfg = tiny_cfg(**(cfg_kwargs or {}))
    torch.manual_seed(seed)
    theirs = randomize_module(ByobNet(cfg), seed=seed, scale=0.2)
    ours = timm.create_model("visattn_halonet26t", model_cfg=cfg, **model_kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _ops(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[bool, str, str]]:
    return logged_ops(model, x, (HaloAttention, HaloAttn))


def test_attention_is_visattn():
    model = timm.create_model("visattn_halonet50ts", pretrained=False)
    halos = [m for m in model.modules() if isinstance(m, HaloAttention)]
    assert len(halos) == 5
    assert {m.num_heads for m in halos} == {4, 8}  # halonet50ts's per-block override in stage 2
    assert not any(type(m).__name__ == "HaloAttn" for m in model.modules())


@pytest.mark.parametrize("cfg_kwargs", [dict(), dict(block_size=4, halo_size=6)])
@pytest.mark.parametrize("img_hw", [(32, 32), (64, 96)])
def test_same_logits_and_gradients_as_timm(cfg_kwargs, img_hw):
    """Same weights: logits, input gradients and halo-layer weight gradients within 1e-4 of timm's (fp32), at two
    sizes; also with a halo larger than the block."""
    ours, theirs = _pair(cfg_kwargs)
    x = torch.randn(2, 3, *img_hw, generator=torch.Generator().manual_seed(1))
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    assert out_theirs.abs().max() > 0.1
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-4, rtol=0)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-4, rtol=1e-4)
    grads_theirs = {n: p.grad for n, p in theirs.named_parameters()}
    attn_names = [n for n, _ in ours.named_parameters() if ".self_attn." in n]
    assert attn_names
    for name, p in ours.named_parameters():
        if name in attn_names:
            torch.testing.assert_close(p.grad, grads_theirs[name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_NAMES)
def test_published_models_equal_timm(name):
    """The full timm configurations at 256 and 256 x 512 (random weights, BN statistics included)."""
    torch.manual_seed(0)
    theirs = randomize_module(timm.create_model(name), scale=0.1)
    ours = timm.create_model(f"visattn_{name}").eval()
    ours.load_state_dict(theirs.state_dict())
    for hw in ((256, 256), (256, 512)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=0)


def test_outside_the_halo_layers_the_model_is_timms_op_for_op():
    """With ``fold_bn=False`` every aten op outside the halo layers (name, argument shapes and strides) is timm's, in
    order; the default folds each conv's batch norm (no batch norm left but the norms after the halo layers)."""
    x = torch.randn(2, 3, 64, 32)
    unfolded, theirs = _pair(fold_bn=False)
    outside = [op[1:] for op in _ops(theirs, x) if not op[0]]
    assert [op[1:] for op in _ops(unfolded, x) if not op[0]] == outside
    folded, _ = _pair()
    assert any(op[1] == "rsqrt" for op in _ops(folded, x))  # the first forward folds
    assert not any(op[1] == "rsqrt" for op in _ops(folded, x))  # later ones use the cache
    norms = [op[1] for op in _ops(folded, x) if "batch_norm" in op[1]]
    assert len(norms) == sum(name.endswith(".post_attn") for name, _ in folded.named_modules()) == 3
    assert sum("batch_norm" in op[0] for op in outside) > 10


def test_folded_inference_equals_timm_and_follows_weight_changes():
    ours, theirs = _pair()
    assert all(type(m) is FoldedConvNormAct for m in ours.modules() if isinstance(m, ConvNormAct))
    x = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=0)
        for model in (ours, theirs):  # in-place changes of a statistic and a conv weight
            model.stem.conv1.bn.running_var.mul_(3.0)
            model.stages[0][0].conv1_1x1.conv.weight.mul_(-1.0)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=0)
        other = randomize_module(copy.deepcopy(theirs), seed=9, scale=0.2)
        ours.load_state_dict(other.state_dict())
        torch.testing.assert_close(ours(x), other(x), atol=1e-4, rtol=0)
        ours.double(), other.double()
        torch.testing.assert_close(ours(x.double()), other(x.double()), atol=1e-10, rtol=0)
        clone = copy.deepcopy(ours)
        torch.testing.assert_close(clone(x.double()), other(x.double()), atol=1e-10, rtol=0)
        for value in (2.0, 5.0):  # replaced twice between forwards (a freed address must not match the cache)
            for model in (ours, other):
                model.stem.conv1.bn.running_var = torch.full_like(model.stem.conv1.bn.running_var, value)
                model.stem.conv1.conv.weight.data = model.stem.conv1.conv.weight.data * value
        torch.testing.assert_close(ours(x.double()), other(x.double()), atol=1e-10, rtol=0)


def test_training_mode_updates_batch_norm_statistics_as_timm():
    """Folding is for inference only: in train mode the norms see the batch and update their statistics."""
    ours, theirs = _pair()
    ours.train(), theirs.train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.stem.conv1.bn.running_mean, theirs.stem.conv1.bn.running_mean)


def test_folded_inference_on_the_meta_device():
    with torch.device("meta"):
        model = timm.create_model("visattn_halonet26t", model_cfg=tiny_cfg()).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_timm_contract():
    check_timm_contract("visattn_halonet26t", 32, model_cfg=tiny_cfg())


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_parameter_count_and_keys_equal_timm(name):
    assert count_params_meta(f"visattn_{name}") == count_params_meta(name)
    with torch.device("meta"):
        ours = timm.create_model(f"visattn_{name}").state_dict()
        theirs = timm.create_model(name).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_pretrained_cfg_points_at_timm_weights():
    for name in TIMM_NAMES:
        cfg = timm.models.get_pretrained_cfg(f"visattn_{name}")
        assert cfg.hf_hub_id == f"timm/{timm.models.get_pretrained_cfg(name).hf_hub_id.split('/')[1]}"
        assert cfg.input_size == (3, 256, 256)


def test_pretrained_loads_a_timm_checkpoint(tmp_path):
    cfg = tiny_cfg()
    source = randomize_module(ByobNet(cfg), seed=5, scale=0.2)
    path = tmp_path / "halonet.pth"
    torch.save(source.state_dict(), path)
    loaded = timm.create_model("visattn_halonet26t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               model_cfg=cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-4, rtol=0)


def test_pretrained_with_keys_that_do_not_match_lists_them(tmp_path):
    cfg = tiny_cfg()
    state = ByobNet(cfg).state_dict()
    state["stages.1.0.self_attn.extra"] = torch.zeros(1)
    del state["stages.2.0.self_attn.pos_embed.width_rel"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*stages\.2\.0\.self_attn\.pos_embed\.width_rel"
                                           r".*Unexpected key.*self_attn\.extra"):
        timm.create_model("visattn_halonet26t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          model_cfg=cfg)


def test_image_sizes_the_halo_layers_cannot_tile_are_refused():
    model = timm.create_model("visattn_halonet26t", model_cfg=tiny_cfg()).eval()
    assert model.fits((32, 32)) and model.fits((64, 96)) and not model.fits((48, 48))
    with pytest.raises(ValueError, match=r"image size \(H, W\)=\(48, 48\).*multiples of 32"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"img_size=\(200, 200\).*block 8 at reduction 32.*multiples of 256"):
        timm.create_model("visattn_halonet26t", img_size=200)
    with pytest.raises(ValueError, match="forward_intermediates|image size"):
        model.forward_intermediates(torch.randn(1, 3, 40, 32))


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match=r"unknown HaloNet argument\(s\) \['blok_size'\].*'fold_bn'"):
        timm.create_model("visattn_halonet26t", blok_size=8)
    with pytest.raises(TypeError, match="fold_bn must be a bool, got 'yes'"):
        timm.create_model("visattn_halonet26t", fold_bn="yes")
    with pytest.raises(TypeError, match="model_cfg must be a timm ByoModelCfg"):
        timm.create_model("visattn_halonet26t", model_cfg=dict(blocks=()))
    with pytest.raises(ValueError, match="halo attention only"):
        timm.create_model("visattn_halonet26t", model_cfg=tiny_cfg(self_attn_layer="bottleneck"))


def test_tiny_halonet_learns_digits():
    torch.manual_seed(0)
    model = timm.create_model("visattn_halonet26t", model_cfg=tiny_cfg(), num_classes=10)
    losses = digits_loss_falls(model, 32, lr=3e-3)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_compiles_and_matches_eager():
    ours, _ = _pair()
    compiled = torch.compile(ours)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ours(x), atol=1e-4, rtol=1e-4)


PAPER_PARAMS_M = (5.5, 8.1, 9.4, 11.8, 19.1, 30.7, 43.5, 67.4)


@pytest.mark.parametrize("index", range(8))
def test_paper_family_parameter_counts(index):
    """H0-H7 on the meta device: counts rounded to 0.1 M (see halonet_cfg for their provenance)."""
    assert round(count_params_meta(f"visattn_halonet_h{index}") / 1e6, 1) == PAPER_PARAMS_M[index]


def test_paper_h1_is_timm_halonet_h1():
    """timm's halonet_h1 ("as per the paper") has the same architecture: same parameter count and shapes."""
    assert count_params_meta("visattn_halonet_h1") == count_params_meta("halonet_h1") == 8_100_056
    with torch.device("meta"):
        ours = timm.create_model("visattn_halonet_h1").state_dict()
        theirs = timm.create_model("halonet_h1").state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_paper_family_values_are_wider_than_queries():
    model = timm.create_model("visattn_halonet_h5", pretrained=False, num_classes=0)
    layer = model.stages[0][0].self_attn
    assert isinstance(layer, HaloAttention)
    assert (layer.dim_head_qk * layer.num_heads, layer.dim_head_v * layer.num_heads) == (64, 160)
    assert (layer.block_size, layer.halo_size) == (14, 2)
    assert model.pretrained_cfg["input_size"] == (3, 448, 448)
    with pytest.raises(ValueError, match=r"img_size=\(256, 256\).*multiples of 448"):
        timm.create_model("visattn_halonet_h5", img_size=256)


def test_paper_h0_forward_at_its_input_size():
    model = timm.create_model("visattn_halonet_h0", num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
