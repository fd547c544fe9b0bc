"""visattn_maxvit_*: timm's contract, the same logits and gradients as timm's MaxViT with the same weights, timm's
checkpoint loaded by pretrained=True, parameter counts equal to timm's, image sizes and arguments refused clearly."""

from __future__ import annotations

import pytest
import timm
import torch
from contract import (
    check_lens_matches,
    check_meta_build_matches,
    check_state_dict_layout_is_timms,
    check_timm_contract,
    count_params_meta,
    digits_loss_falls,
    load_pretrained_file,
)

from visattn.models.maxvit import TIMM_COUNTERPARTS, MaxVitPartitionBlock
from visattn.nn.partition import PartitionAttention
from visattn.testing import randomize_module

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "visattn_maxvit_tiny_tf_224"
NARROW = dict(depths=(1, 1, 1, 1), embed_dim=(32, 32, 64, 64), head_hidden_size=64, stem_width=16)
"""Tiny widths and depths, MaxViT's layout (four stages, partition size img_size // 32)."""
THREE_STAGES = dict(depths=(1, 1, 1), embed_dim=(32, 32, 32), block_type=("M",) * 3, head_hidden_size=32,
                    stem_width=8, transformer_partition_ratio=16)
"""Three stages and partition size img_size // 16: 2 x 2 partitions at 32 px, for the cheapest training test."""


def _pair(kwargs, seed=0):
    """visattn's model with seeded random weights (every parameter, norms included: Swin-V2's post-norms start at
    0, which would hide the attention) and timm's model holding the same state dict."""
    ours = randomize_module(timm.create_model(NAME, **kwargs), seed, scale=0.2)
    theirs = timm.create_model(NAME.removeprefix("visattn_"), **kwargs).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_timm_contract():
    model = check_timm_contract(NAME, 64, **NARROW)
    blocks = [m for m in model.modules() if isinstance(m, MaxVitPartitionBlock)]
    assert len(blocks) == 8 and all(isinstance(b.attn, PartitionAttention) for b in blocks)
    assert {b.attn.partition_type for b in blocks} == {"block", "grid"}


@pytest.mark.parametrize("name", [f"visattn_maxvit_{size}_tf_224" for size in ("tiny", "small", "base", "large")]
                         + ["visattn_maxvit_tiny_tf_384", "visattn_maxvit_tiny_tf_512"])
def test_parameter_count_equals_timm(name):
    """Paper (Table 1, 224 px): T 31 M, S 69 M, B 120 M, L 212 M. Across resolutions only the bias tables change
    (partition size 7 / 12 / 16 at 224 / 384 / 512), checked on T; every name has a timm counterpart."""
    assert name in TIMM_COUNTERPARTS
    assert count_params_meta(name) == count_params_meta(TIMM_COUNTERPARTS[name])


def test_state_dict_keys_and_shapes_are_timms():
    check_state_dict_layout_is_timms("visattn_maxvit_small_tf_384", "maxvit_small_tf_384", ordered=False)


@pytest.mark.parametrize(("img_size", "run_size"), [(224, 224), (224, 448), (64, 64)])
def test_same_logits_and_gradients_as_timm(img_size, run_size):
    """fp32, eval, same state dict: logits, input gradients and every parameter gradient within 1e-4 of timm's;
    at 224 (7 x 7 partitions), at 448 on the model built for 224 (dynamic size), and at 64 (2 x 2)."""
    ours, theirs = _pair(dict(img_size=img_size, num_classes=7, **NARROW))
    x = torch.randn(2, 3, run_size, run_size, generator=torch.Generator().manual_seed(1))
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-4, rtol=0)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-4, rtol=1e-4)
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_grads[name].grad, atol=1e-4, rtol=1e-4, msg=name)


def test_real_tiny_layout_same_logits_as_timm():
    """MaxViT-T's real widths and depths (64 px, 2 x 2 partitions): the same logits as timm's."""
    ours, theirs = _pair(dict(img_size=64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=0)


def test_pretrained_loads_a_timm_checkpoint(tmp_path):
    """A randomly initialised timm MaxViT-T saved to a file and loaded by pretrained=True: the same logits; built
    for another partition size, timm's filter resizes the bias tables exactly as timm does for its own model."""
    source = randomize_module(timm.create_model("maxvit_tiny_tf_224", img_size=64, **NARROW), 3, scale=0.2)
    path = tmp_path / "maxvit.pth"
    torch.save(source.state_dict(), path)
    overlay = dict(file=str(path))
    loaded = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay, img_size=64, **NARROW).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)
    resized = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay, img_size=96, **NARROW).eval()
    timm_resized = timm.create_model("maxvit_tiny_tf_224", pretrained=True, pretrained_cfg_overlay=overlay,
                                     img_size=96, **NARROW).eval()
    assert resized.stages[0].blocks[0].attn_block.attn.rel_pos.relative_position_bias_table.shape[-1] == 5
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(resized(x), timm_resized(x), atol=1e-4, rtol=0)


def test_pretrained_cfg_points_at_timms_weights():
    cfg = timm.create_model(NAME, img_size=64, **NARROW).pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/maxvit_tiny_tf_224.in1k"
    assert cfg["input_size"] == (3, 224, 224)
    assert timm.models.get_pretrained_cfg("visattn_maxvit_large_tf_512").hf_hub_id == "timm/maxvit_large_tf_512.in1k"


def test_pretrained_with_keys_that_do_not_match_lists_them(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("maxvit_tiny_tf_224", img_size=64, **NARROW).state_dict()
    state["stages.0.blocks.0.attn_block.attn.extra"] = torch.zeros(1)
    del state["stages.1.blocks.0.attn_grid.attn.proj.bias"]
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*attn_grid\.attn\.proj\.bias.*Unexpected key.*extra"):
        load_pretrained_file(NAME, state, tmp_path, img_size=64, **NARROW)


@pytest.mark.parametrize("size", [(96, 96), (64, 96), (100, 100)])
def test_image_size_that_does_not_partition_is_refused(size):
    model = timm.create_model(NAME, img_size=64, **NARROW).eval()
    with pytest.raises(ValueError, match=r"img_size=\(\d+, \d+\).*multiple of \(64, 64\)"):
        model(torch.randn(1, 3, *size))
    with pytest.raises(ValueError, match="img_size"):
        model.forward_intermediates(torch.randn(1, 3, *size))


def test_non_square_image_that_partitions_runs():
    model = timm.create_model(NAME, img_size=64, num_classes=3, **NARROW).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 128)).shape == (1, 3)


def test_built_on_meta_then_materialised_equals_a_cpu_build():
    """Meta construction, ``to_empty``, timm's ``reinit_non_persistent_buffers`` and a state dict: the same logits
    as the model built on the CPU."""
    ours, _ = _pair(dict(img_size=64, **NARROW))
    check_meta_build_matches(NAME, ours, torch.randn(1, 3, 64, 64), img_size=64, **NARROW)


def test_lens_captures_the_maps_it_captures_on_timms_model():
    """visattn.lens routes visattn's attention modules: float64, same weights, the captured attention maps and the
    model output equal those on timm's model."""
    ours, theirs = (m.double() for m in _pair(dict(img_size=64, **NARROW)))
    check_lens_matches(ours, theirs, torch.randn(1, 3, 64, 64, dtype=torch.float64), num_layers=8)


def test_unknown_argument_is_refused():
    with pytest.raises(TypeError, match=r"unknown MaxViT argument\(s\) \['window'\]"):
        timm.create_model(NAME, window=7)


def test_other_block_types_are_refused():
    with pytest.raises(ValueError, match=r"block_type=\('C', 'T'\)"):
        timm.create_model(NAME, img_size=64, depths=(1, 1), embed_dim=(32, 64), block_type=("C", "T"))


def test_changing_the_partition_size_after_building_is_refused():
    model = timm.create_model(NAME, img_size=64, **NARROW)
    with pytest.raises(NotImplementedError, match="img_size"):
        model.set_input_size(img_size=(96, 96))


def test_tiny_config_trains_on_digits():
    model = timm.create_model(NAME, img_size=32, num_classes=10, **THREE_STAGES)
    assert model.stages[0].blocks[0].attn_block.partition_size == (2, 2)
    digits_loss_falls(model, 32)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = timm.create_model(NAME, img_size=32, num_classes=5, **THREE_STAGES).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=0)
