"""replace_attention on Hugging Face vision transformers (random-init tiny configs): weights kept, outputs equal with
mixer="softmax" (fp32, eval, 1e-5), the mixer called with the patch grid and the prefix tokens each model has."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import visattn  # noqa: E402
from visattn.nn.replace_hf import IMPLEMENTATION, replace_hf_attention  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64)

MODELS = {  # name: (model class, config class, extra config, prefix tokens)
    "vit": ("ViTForImageClassification", "ViTConfig", {}, 1),
    "deit": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", {}, 2),
    "dinov2": ("Dinov2Model", "Dinov2Config", {}, 1),
    "dinov2_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", {"num_register_tokens": 4}, 5),
    "siglip": ("SiglipVisionModel", "SiglipVisionConfig", {}, 0),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", {}, 1),
}


def _build(name: str) -> torch.nn.Module:
    model_cls, config_cls, extra, _ = MODELS[name]
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**COMMON, **extra)).eval()


def _output(model: torch.nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    out = model(pixel_values=x, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _record_calls(model: torch.nn.Module) -> list[tuple[int, tuple[int, ...]]]:
    seen: list[tuple[int, tuple[int, ...]]] = []
    for module in model.modules():
        if hasattr(module, "visattn_mixer"):
            module.visattn_mixer.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape[2], args[3])))
    return seen


@pytest.mark.parametrize("name", sorted(MODELS))
def test_softmax_keeps_outputs_and_weights(name):
    model = _build(name)
    swapped = visattn.replace_attention(copy.deepcopy(model), "softmax")
    assert swapped.config._attn_implementation == IMPLEMENTATION
    for (key, before), (key_after, after) in zip(model.state_dict().items(), swapped.state_dict().items(),
                                                 strict=True):
        assert key == key_after and torch.equal(before, after)
    seen = _record_calls(swapped)
    x = torch.randn(2, 3, 32, 32)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, new = _output(model, x_ref), _output(swapped, x_new)
    torch.testing.assert_close(new, ref, atol=1e-5, rtol=0)
    ref.square().sum().backward()
    new.square().sum().backward()
    torch.testing.assert_close(x_new.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    prefix = MODELS[name][3]
    assert seen == [(16 + prefix, (4, 4))] * 2


@pytest.mark.parametrize("name", ["vit", "dinov2_registers"])
def test_a_structured_mixer_changes_the_output_and_sees_the_grid(name):
    model = _build(name)
    swapped = visattn.replace_attention(copy.deepcopy(model), "neighborhood", kernel_size=3)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(_output(swapped, x), _output(model, x), atol=1e-4)


def test_another_image_size_infers_the_square_grid():
    model = _build("vit")
    swapped = visattn.replace_attention(copy.deepcopy(model), "softmax")
    seen = _record_calls(swapped)
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(_output(swapped, x, interpolate_pos_encoding=True),
                               _output(model, x, interpolate_pos_encoding=True), atol=1e-5, rtol=0)
    assert seen[0] == (37, (6, 6))


def test_clip_text_tower_keeps_sdpa_and_vision_gets_the_mixer():
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=99, max_position_embeddings=16),
        vision_config=dict(COMMON, num_hidden_layers=1), projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    swapped = visattn.replace_attention(copy.deepcopy(model), "softmax")
    assert [n for n, m in swapped.named_modules() if hasattr(m, "visattn_mixer")] == [
        "vision_model.encoder.layers.0.self_attn"]
    inputs = dict(input_ids=torch.randint(0, 99, (2, 7)), pixel_values=torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(swapped(**inputs).logits_per_image, model(**inputs).logits_per_image, atol=1e-5,
                               rtol=0)


def test_mixer_parameters_are_new_and_bad_input_is_refused():
    model = visattn.replace_attention(_build("vit"), "hedgehog")
    assert any(".visattn_mixer." in key for key in model.state_dict())
    with pytest.raises(TypeError, match="PreTrainedModel"):
        replace_hf_attention(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="kernel_sise"):
        visattn.replace_attention(_build("vit"), "neighborhood", kernel_sise=3)
    with pytest.raises(NotImplementedError, match="needs the layer input x"):
        visattn.replace_attention(_build("vit"), "affine_scaled")
    text = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=64, vocab_size=99))
    with pytest.raises(ValueError, match="no vision attention layer"):
        visattn.replace_attention(text, "softmax")


def test_the_lens_routes_the_mixer_not_its_own_softmax():
    """Under visattn.lens.capture the model still runs its mixers (same logits) and the recorded probabilities are
    the neighborhood mixer's: zero outside each query's 3x3 window."""
    from visattn.lens import capture
    from visattn.lens.adapters import attention_layers

    model = visattn.replace_attention(_build("vit"), "neighborhood", kernel_size=3)
    assert [(info.name, info.family) for info in attention_layers(model)] == [
        (f"vit.layers.{i}.attention.visattn_mixer", "visattn") for i in range(2)]
    x = torch.randn(1, 3, 32, 32)
    ref = _output(model, x)
    with capture(model, what="probs") as recording:
        out = _output(model, x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    probs = recording.get("probs", 0).tensor
    assert probs.shape == (1, 2, 17, 17)
    grid_probs = probs[0, 0, 1:, 1:].reshape(4, 4, 4, 4)
    assert grid_probs[0, 0, 3, 3] == 0 and grid_probs[0, 0, 1, 1] > 0
