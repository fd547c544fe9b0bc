"""visattn_fasternet_*: timm's model contract, same logits and gradients as timm's FasterNet on the same weights,
parameter counts (timm's and the paper's), timm and official checkpoints through pretrained=True, bad arguments and
checkpoints refused, training."""

from __future__ import annotations

import pytest
import timm
import torch
from contract import (
    check_state_dict_layout_is_timms,
    check_timm_contract,
    count_params_meta,
    digits_loss_falls,
    load_pretrained_file,
)

import visattn.models  # noqa: F401
from visattn.models.fasternet import official_to_timm_layout
from visattn.models.published import PUBLISHED
from visattn.nn.feature_maps import FasterNetBlock, PartialConv2d
from visattn.testing import randomize_module

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(embed_dim=16, depths=(1, 2, 1, 1), feature_dim=64)
SIZES = ("t0", "t1", "t2", "s", "m", "l")


def _pair(seed: int = 0, **kwargs):
    """timm's FasterNet-T0 with random weights and BN statistics, and visattn's holding the same weights (eval)."""
    torch.manual_seed(seed)
    theirs = randomize_module(timm.create_model("fasternet_t0", **TINY, **kwargs), seed=seed, scale=0.2)
    ours = timm.create_model("visattn_fasternet_t0", **TINY, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _official_layout(state: dict[str, torch.Tensor], num_stages: int = 4) -> dict[str, torch.Tensor]:
    """timm's FasterNet keys renamed to JierunChen/FasterNet's ``models/fasternet.py`` layout: blocks of stage i at
    ``stages.{2i}.blocks``, PatchMerging before stage i at ``stages.{2i-1}.{reduction,norm}``, the pre-head
    convolution at ``avgpool_pre_head.1`` (Sequential(pool, conv, act)), the classifier at ``head``."""
    official = {}
    for key, value in state.items():
        for i in range(num_stages):
            if key.startswith(f"stages.{i}.downsample."):
                key = key.replace(f"stages.{i}.downsample.", f"stages.{2 * i - 1}.")
                break
            if key.startswith(f"stages.{i}.blocks."):
                key = key.replace(f"stages.{i}.blocks.", f"stages.{2 * i}.blocks.")
                break
        key = key.replace("conv_head.", "avgpool_pre_head.1.").replace("classifier.", "head.")
        official[key] = value
    return official


def test_blocks_are_visattn():
    model = timm.create_model("visattn_fasternet_t0", **TINY)
    blocks = [m for m in model.modules() if isinstance(m, FasterNetBlock)]
    assert len(blocks) == sum(TINY["depths"])
    assert all(isinstance(b.spatial_mixing, PartialConv2d) for b in blocks)
    assert not any(isinstance(m, (timm.models.fasternet.MLPBlock, timm.models.fasternet.Partial_conv3))
                   for m in model.modules())


@pytest.mark.parametrize("img_hw", [(64, 64), (45, 71)])
def test_same_logits_and_gradients_as_timm(img_hw):
    """Same weights: logits and input gradients within 1e-5 (fp32, eval) of timm's at two sizes (45 x 71: the stem
    and the merging layers drop a remainder, as timm's do); parameter gradients within 1e-4."""
    ours, theirs = _pair()
    x = torch.randn(2, 3, *img_hw, generator=torch.Generator().manual_seed(1))
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    assert out_theirs.abs().max() > 0.1
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=0)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-5, rtol=1e-5)
    grads_theirs = {n: p.grad for n, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads_theirs[name], atol=1e-4, rtol=1e-4, msg=name)


def test_slicing_form_matches_timm_and_trains():
    """``pconv_fw_type="slicing"``: logits equal timm's slicing form; timm's cannot run backward (it overwrites a
    view of its own copy in place, "only for inference"), visattn's can, with split_cat's gradients."""
    ours, theirs = _pair(pconv_fw_type="slicing")
    split, _ = _pair()
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
    ours(x).square().sum().backward()
    split(x).square().sum().backward()
    grads = dict(split.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-5, rtol=1e-5, msg=name)


def test_timm_contract():
    check_timm_contract("visattn_fasternet_t0", 64, pass_img_size=False, **TINY)


@pytest.mark.parametrize("size", SIZES)
def test_parameter_count_equals_timm_and_the_paper(size):
    """Counted on the meta device: timm's count exactly, and the paper's (3.9, 7.6, 15.0, 31.1, 53.5, 93.4 M) to
    the rounding of its one decimal (S counts 31.18 M against the published 31.1 M: 0.3 % over)."""
    name = f"visattn_fasternet_{size}"
    ours = count_params_meta(name)
    assert ours == count_params_meta(f"fasternet_{size}")
    assert abs(ours / 1e6 - PUBLISHED[name].params_m) <= 0.01 * PUBLISHED[name].params_m


def test_same_state_dict_keys_as_timm():
    # the same names, not in the same order (blocks register spatial_mixing before mlp)
    check_state_dict_layout_is_timms("visattn_fasternet_t0", "fasternet_t0", ordered=False)


def test_pretrained_cfg_points_at_timm_weights():
    cfg = timm.models.get_pretrained_cfg("visattn_fasternet_t0")
    assert cfg.hf_hub_id == "timm/fasternet_t0.in1k"
    assert cfg.input_size == (3, 224, 224)


def test_pretrained_loads_a_timm_checkpoint(tmp_path):
    torch.manual_seed(3)
    source = randomize_module(timm.create_model("fasternet_t0", **TINY), seed=3, scale=0.2)
    loaded = load_pretrained_file("visattn_fasternet_t0", source.state_dict(), tmp_path, **TINY).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("lightning_prefix", [False, True])
def test_pretrained_loads_the_official_layout(tmp_path, lightning_prefix):
    """The official flat layout (names as in JierunChen/FasterNet's models/fasternet.py), optionally under
    PyTorch Lightning's ``model.`` prefix, is renamed on load."""
    torch.manual_seed(4)
    source = randomize_module(timm.create_model("fasternet_t0", **TINY), seed=4, scale=0.2)
    official = _official_layout(source.state_dict())
    assert {"patch_embed.proj.weight", "stages.0.blocks.0.spatial_mixing.partial_conv3.weight",
            "stages.1.reduction.weight", "stages.1.norm.running_var", "stages.2.blocks.1.mlp.3.weight",
            "stages.5.reduction.weight", "stages.6.blocks.0.mlp.1.weight", "avgpool_pre_head.1.weight",
            "head.weight", "head.bias"} <= set(official)
    assert not any("downsample" in k or "conv_head" in k or "classifier" in k for k in official)
    if lightning_prefix:
        official = {f"model.{k}": v for k, v in official.items()}
    assert official_to_timm_layout(official).keys() == source.state_dict().keys()
    loaded = load_pretrained_file("visattn_fasternet_t0", official, tmp_path, **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)


def test_pretrained_with_keys_that_do_not_match_lists_them(tmp_path):
    state = timm.create_model("fasternet_t0", **TINY).state_dict()
    state["stages.0.blocks.0.extra"] = torch.zeros(1)
    del state["stages.1.downsample.norm.bias"]
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*stages\.1\.downsample\.norm\.bias"
                                           r".*Unexpected key.*stages\.0\.blocks\.0\.extra"):
        load_pretrained_file("visattn_fasternet_t0", state, tmp_path, **TINY)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match=r"unknown FasterNet argument\(s\) \['embed_dims'\]"):
        timm.create_model("visattn_fasternet_t0", embed_dims=16)
    with pytest.raises(ValueError, match="layer_scale_init_value must be 0"):
        timm.create_model("visattn_fasternet_t0", layer_scale_init_value=1e-6, **TINY)
    with pytest.raises(ValueError, match="n_div must be a positive int dividing embed_dim=18, got 4"):
        timm.create_model("visattn_fasternet_t0", embed_dim=18, depths=(1, 1, 1, 1))
    model = timm.create_model("visattn_fasternet_t0", **TINY)
    with pytest.raises(ValueError, match=r"x must be a \(B, 16, H, W\) tensor"):
        model.stages[0].blocks[0].spatial_mixing(torch.randn(1, 8, 4, 4))


def test_tiny_fasternet_learns_digits():
    torch.manual_seed(0)
    model = timm.create_model("visattn_fasternet_t0", num_classes=10, **TINY)
    losses = digits_loss_falls(model, 32)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_compiles_and_matches_eager():
    ours, _ = _pair()
    compiled = torch.compile(ours)
    x = torch.randn(2, 3, 35, 42)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ours(x), atol=1e-5, rtol=1e-5)
