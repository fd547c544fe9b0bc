"""``visattn.lens.capture``: argument checks, records with named dims, appending, scoping to one model."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from visattn import lens
from visattn.lens import STATE, Record


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=4).eval()


@pytest.fixture
def model():
    return tiny_vit()


@pytest.fixture
def image():
    return torch.randn(2, 3, 32, 32)


def test_unknown_what_names_the_bad_and_the_valid(model):
    with pytest.raises(ValueError, match=r"unknown names \['attn', 'weights'\]; valid names are \('probs', 'logits'"):
        lens.capture(model, what=("probs", "attn", "weights")).__enter__()
    with pytest.raises(ValueError, match="at least one"):
        lens.capture(model, what=()).__enter__()
    with pytest.raises(TypeError, match="what must be"):
        lens.capture(model, what=[1]).__enter__()


def test_layers_out_of_range_name_them_and_the_valid_range(model):
    with pytest.raises(ValueError, match=r"layers \[-1, 2, 7\] out of range: VisionTransformer has 2 attention layers, "
                                         r"valid indices are 0\.\.1"):
        lens.capture(model, layers=[0, 2, 7, -1]).__enter__()
    with pytest.raises(TypeError, match="layers must contain ints"):
        lens.capture(model, layers=[True]).__enter__()
    with pytest.raises(TypeError, match="layers must be an int, a sequence of ints or None"):
        lens.capture(model, layers="0").__enter__()
    assert STATE.recorders == []


def test_only_selected_layers_are_recorded(model, image):
    with torch.no_grad(), lens.capture(model, layers=1, what="probs") as rec:
        model(image)
    assert rec.layers == (1,) and rec.what == ("probs",)
    assert len(rec.calls(1)) == 1
    with pytest.raises(ValueError, match=r"layer 0 was not captured; this recording has layers \(1,\)"):
        rec.get("probs", 0)
    with pytest.raises(ValueError, match=r"'logits' was not captured"):
        rec.get("logits", 1)


def test_repeated_forwards_append_and_stack(model, image):
    with torch.no_grad(), lens.capture(model, what=("probs", "hidden")) as rec:
        with pytest.raises(ValueError, match="nothing recorded at layer 0"):
            rec.get("probs", 0)
        model(image)
        model(image[:1])
    assert [r.shape["batch"] for r in rec.all("probs", 0)] == [2, 1]
    torch.testing.assert_close(rec.get("probs", 0, call=1).tensor, rec.get("probs", 0, call=0).tensor[:1])
    stacked = rec.stacked("probs", 0)
    assert stacked.dims == ("batch", "head", "query", "key") and stacked.shape["batch"] == 3
    with pytest.raises(ValueError, match="call 2 out of range: layer 0 has 2 recorded calls"):
        rec.get("probs", 0, call=2)
    rec.clear()
    assert rec.calls(0) == []


def test_stacking_calls_of_different_shapes_is_refused(model):
    with torch.no_grad(), lens.capture(model, layers=0) as rec:
        model(torch.randn(1, 3, 32, 32))
        model.set_input_size(img_size=(24, 24))
        model(torch.randn(1, 3, 24, 24))
    with pytest.raises(ValueError, match="different shapes"):
        rec.stacked("probs", 0)


def test_record_named_dims_and_numpy():
    record = Record(torch.rand(1, 2, 3, 3, dtype=torch.bfloat16), ("batch", "head", "query", "key"))
    array = record.to_numpy()
    assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.shape == (1, 2, 3, 3)
    assert record.axis("key") == 3
    with pytest.raises(ValueError, match=r"dim 'channel' not in"):
        record.axis("channel")
    with pytest.raises(ValueError, match="needs a 4-D tensor"):
        Record(torch.zeros(2, 3), ("batch", "head", "query", "key"))


def test_records_are_detached_unless_asked(model, image):
    with lens.capture(model, layers=0) as rec:
        model(image)
    assert not rec.get("probs", 0).tensor.requires_grad
    with lens.capture(model, layers=0, detach=False) as rec:
        out = model(image)
    probs = rec.get("probs", 0).tensor
    (grad,) = torch.autograd.grad(out.sum(), probs)
    assert grad.shape == probs.shape and grad.abs().sum() > 0


def test_nested_captures_of_two_models_do_not_mix(image):
    first, second = tiny_vit(0), tiny_vit(1)
    with torch.no_grad(), lens.capture(first) as rec_first, lens.capture(second) as rec_second:
        first(image)
    assert len(rec_first.calls(0)) == 1 and rec_second.calls(0) == []


def test_nested_captures_of_one_model_both_record(model, image):
    with torch.no_grad(), lens.capture(model, layers=0) as outer, lens.capture(model, what="q") as inner:
        model(image)
    assert len(outer.calls(0)) == 1 and len(inner.calls(0)) == 1 and len(inner.calls(1)) == 1
    assert "forward" not in model.blocks[0].attn.__dict__ and model.blocks[0].attn.fused_attn


def test_conflicting_numberings_on_one_module_are_refused():
    model = torch.nn.Sequential(tiny_vit())
    with lens.capture(model, within="0.blocks.1"):
        with pytest.raises(ValueError, match="already routed by another lens context"):
            lens.capture(model[0], layers=1).__enter__()
    assert STATE.recorders == []


def test_capture_restores_state_on_error(model, image):
    with pytest.raises(RuntimeError, match="inside"), lens.capture(model):
        raise RuntimeError("inside")
    assert STATE.recorders == [] and "forward" not in model.blocks[1].attn.__dict__
