"""The lens on Raptor (arXiv 2512.19941), whose shared blocks run once per step of their phase: one lens layer per
applied step, each map equal to a written-out float64 recurrence, outputs unchanged, edits and selections per step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import visattn.models  # noqa: F401  (registers visattn_raptor_*)
from visattn import cli, lens
from visattn.lens import STATE, Edit
from visattn.lens.adapters.base import ROUTE_ATTR
from visattn.models.raptor import Raptor

pytestmark = pytest.mark.usefixtures("one_thread")

PHASES = [[0, 2], [1, 3, 4]]
"""Non-contiguous on purpose: application order (time) differs from the order of the shared blocks."""

TINY = dict(img_size=(24, 40), patch_size=8, embed_dim=12, num_heads=3, num_classes=5, reg_tokens=1)
"""A 3 x 5 patch grid, a class and a register token: 17 tokens, 3 heads of 4 channels."""


def raptor(dtype: torch.dtype = torch.float32, seed: int = 0) -> Raptor:
    """A tiny Raptor with every parameter drawn afresh (LayerScale and gates far from their near-identity init)."""
    model = Raptor(PHASES, **TINY).eval().to(dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.4)
    return model


def image(dtype: torch.dtype = torch.float32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 24, 40, generator=torch.Generator().manual_seed(1), dtype=dtype)


def written_out(model: Raptor, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The recurrence by hand: per step ``l`` the shared block of layer ``l``'s phase at time ``l + 1``; returns
    each step's attention probs, each step's input state and the final state after the model's norm."""
    phase_of = {layer: p for p, phase in enumerate(model.phases) for layer in phase}
    state = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    probs, inputs = [], []
    for layer in range(model.depth):
        block = model.recurrent_blocks[phase_of[layer]]
        attn, mlp = block.attn, block.mlp
        inputs.append(state)
        b, n, c = state.shape
        h = F.layer_norm(state, (c,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
        q, k, v = (h @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        p = logits.exp() / logits.exp().sum(-1, keepdim=True)
        probs.append(p)
        mixed = (p @ v).transpose(1, 2).reshape(b, n, c) @ attn.proj.weight.T + attn.proj.bias
        t = torch.full((b, 1, 1), float(layer + 1), dtype=x.dtype)
        gates = block.gates
        g = 1 + F.silu(t * gates.fc1.weight.T + gates.fc1.bias) @ gates.fc2.weight.T + gates.fc2.bias
        g1, g2, g3 = g.chunk(3, dim=-1)
        state = state + g1 * block.ls1.gamma * mixed
        h = F.layer_norm(state, (c,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
        swiglu = F.silu(h @ mlp.fc1_g.weight.T + mlp.fc1_g.bias) * (h @ mlp.fc1_x.weight.T + mlp.fc1_x.bias)
        state = g3 * (state + g2 * block.ls2.gamma * (swiglu @ mlp.fc2.weight.T + mlp.fc2.bias))
    return probs, inputs, model.norm(state)


def test_one_lens_layer_per_applied_step_in_time_order():
    model = raptor()
    infos = lens.attention_layers(model)
    assert len(infos) == model.depth == 5
    assert [info.name for info in infos] == ["recurrent_blocks.0.attn@t1", "recurrent_blocks.1.attn@t2",
                                             "recurrent_blocks.0.attn@t3", "recurrent_blocks.1.attn@t4",
                                             "recurrent_blocks.1.attn@t5"]
    assert [info.index for info in infos] == list(range(5))
    assert all(info.kind == "Attention" and info.num_heads == 3 and info.editable for info in infos)
    assert all("hidden" in info.provides for info in infos)


def test_each_captured_map_equals_the_written_out_recurrence_in_float64():
    model, x = raptor(torch.float64), image(torch.float64)
    probs, inputs, final = written_out(model, x)
    with torch.no_grad(), lens.capture(model, what=("probs", "hidden", "q")) as rec:
        features = model.forward_features(x)
    torch.testing.assert_close(features, final, rtol=0, atol=1e-12)
    assert [len(rec.calls(i)) for i in range(model.depth)] == [1] * model.depth
    for layer in range(model.depth):
        torch.testing.assert_close(rec.get("probs", layer).tensor, probs[layer], rtol=0, atol=1e-12)
        torch.testing.assert_close(rec.get("hidden", layer).tensor, inputs[layer], rtol=0, atol=1e-12)
    # steps 0 and 2 run the same module on different states: their maps differ
    assert not torch.allclose(rec.get("probs", 0).tensor, rec.get("probs", 2).tensor, atol=1e-3)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("layers", [None, [2], [0, 3, 4]])
def test_capture_leaves_outputs_unchanged(dtype, atol, layers):
    model, x = raptor(dtype), image(dtype)
    with torch.no_grad():
        expected = model(x)
        with lens.capture(model, layers=layers) as rec:
            captured = model(x)
    torch.testing.assert_close(captured, expected, rtol=0, atol=atol)
    assert rec.layers == (tuple(range(5)) if layers is None else tuple(layers))


def test_only_selected_steps_run_the_lens_and_everything_is_restored(calls):
    model, x = raptor(), image()
    with torch.no_grad(), lens.capture(model, layers=[2]) as rec:
        model(x)
    assert [call.layer for call in calls] == [2]
    assert [call.name for call in calls] == ["recurrent_blocks.0.attn@t3"]
    assert calls[0].grid == (3, 5) and calls[0].num_prefix_tokens == 2
    assert list(rec.entries) == [2]
    for step in model.blocks:
        assert "forward" not in step.__dict__
    for block in model.recurrent_blocks:
        assert "forward" not in block.attn.__dict__ and ROUTE_ATTR not in block.attn.__dict__
        assert block.attn.fused_attn == timm.layers.use_fused_attn()


class Uniform(Edit):
    """Replaces the attention of the chosen layers by the uniform distribution over keys."""

    def edit_probs(self, probs: torch.Tensor, call) -> torch.Tensor:
        return torch.full_like(probs, 1.0 / probs.shape[-1])


def test_an_edit_acts_on_its_step_only_not_on_the_other_applications_of_the_module():
    model, x = raptor(torch.float64), image(torch.float64)
    with torch.no_grad(), lens.capture(model) as plain:
        expected = model(x)
    with torch.no_grad(), lens.edit(model, [Uniform(layers=[2])]), lens.capture(model) as edited:
        out = model(x)
    for layer in (0, 1):  # before the edited step, step 0 on the same shared module
        torch.testing.assert_close(edited.get("probs", layer).tensor, plain.get("probs", layer).tensor, rtol=0,
                                   atol=0)
    torch.testing.assert_close(edited.get("probs", 2).tensor, torch.full((2, 3, 17, 17), 1 / 17, dtype=torch.float64))
    assert not torch.allclose(edited.get("probs", 4).tensor, plain.get("probs", 4).tensor)
    assert not torch.allclose(out, expected)


def test_nested_captures_of_overlapping_steps_both_record_and_restore():
    model, x = raptor(), image()
    with torch.no_grad():
        expected = model(x)
        with lens.capture(model, layers=[0, 2]) as outer, lens.capture(model, layers=[2, 3]) as inner:
            out = model(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(outer.get("probs", 2).tensor, inner.get("probs", 2).tensor, rtol=0, atol=0)
    assert (list(outer.entries), list(inner.entries)) == ([0, 2], [2, 3])
    assert all(len(outer.calls(i)) == 1 for i in (0, 2)) and all(len(inner.calls(i)) == 1 for i in (2, 3))
    assert all("forward" not in step.__dict__ for step in model.blocks)


def test_within_selects_one_shared_block_or_the_steps():
    model = raptor()
    assert [info.name for info in lens.attention_layers(model, within="recurrent_blocks.0")] == [
        "recurrent_blocks.0.attn@t1", "recurrent_blocks.0.attn@t3"]
    assert [info.name for info in lens.attention_layers(model, within="recurrent_blocks.1.attn")] == [
        "recurrent_blocks.1.attn@t2", "recurrent_blocks.1.attn@t4", "recurrent_blocks.1.attn@t5"]
    assert [info.name for info in lens.attention_layers(model, within="blocks.3")] == ["recurrent_blocks.1.attn@t4"]
    assert len(lens.attention_layers(model, within="blocks")) == 5
    x = image()
    with torch.no_grad(), lens.capture(model, within="recurrent_blocks.1", layers=[1]) as rec:
        model(x)
    assert rec.names == {1: "recurrent_blocks.1.attn@t4"}


def test_gradients_reach_every_step_through_the_recorded_maps():
    model, x = raptor(), image(batch=1)
    with lens.capture(model, detach=False) as rec:
        logits = model(x)
    grads = torch.autograd.grad(logits[0, 0], [rec.get("probs", i).tensor for i in range(5)])
    assert all(g.abs().sum() > 0 for g in grads)


def test_capture_on_the_meta_device():
    with torch.device("meta"):
        model = Raptor(PHASES, **TINY).eval()
        x = torch.empty(2, 3, 24, 40)
    with torch.no_grad(), lens.capture(model, what=("probs", "hidden")) as rec:
        out = model(x)
    assert out.device.type == "meta" and out.shape == (2, 5)
    assert [rec.get("probs", i).tensor.shape for i in range(5)] == [torch.Size((2, 3, 17, 17))] * 5


@pytest.mark.parametrize("name", timm.list_models("visattn_raptor*"))
def test_every_registered_raptor_has_one_lens_layer_per_step(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    infos = lens.attention_layers(model)
    assert len(infos) == model.depth == 12
    assert [info.name.rsplit("@t", 1)[1] for info in infos] == [str(t) for t in range(1, 13)]
    phase_of = {layer: p for p, phase in enumerate(model.phases) for layer in phase}
    assert [info.name.split(".")[1] for info in infos] == [str(phase_of[layer]) for layer in range(12)]


def test_visattn_lens_reports_one_row_per_applied_step(tmp_path):
    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "lens"
    kwargs = "img_size=32,patch_size=8,embed_dim=16,num_heads=2,phases=((0,2),(1,3))"
    assert cli.main(["lens", str(picture), "--model", "visattn_raptor_small_patch16_224", "--model-kwargs", kwargs,
                     "--out", str(out)]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["info"]["layers"] == "0, 1, 2, 3"
    rows = {name: sorted(values) for name, values in data["per_layer"].items()}
    assert any(name.startswith("entropy") for name in rows) and "mean attention distance (patches)" in rows
    assert all(layers == ["0", "1", "2", "3"] for layers in rows.values()), rows
    assert any(name.startswith("phases") for name in data["summary"])
    assert not any("skipped" in note for note in data["notes"]), data["notes"]  # rollouts run over the 4 steps
    for name in ("attention.png", "heads.png", "metrics.png", "similarity.png", "report.html"):
        assert (out / name).stat().st_size > 0


def test_another_numbering_of_a_routed_step_is_refused_on_entry_and_everything_is_restored():
    model = raptor()
    with lens.capture(model, within="recurrent_blocks.1"):  # step t4 is layer 1 of this numbering
        with pytest.raises(ValueError, match=r"'recurrent_blocks.1.attn@t4' is already routed by another lens "
                                             r"context as layer 1"):
            lens.capture(model, layers=3).__enter__()
    assert STATE.recorders == []
    assert all("forward" not in step.__dict__ and not any("@" in key for key in step.__dict__)
               for step in model.blocks)
