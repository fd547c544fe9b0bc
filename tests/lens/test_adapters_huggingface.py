"""Lens adapter for Hugging Face models (ViT, CLIP, LLaVA, Qwen2-VL) through the attention-function registry."""

from __future__ import annotations

import pytest
import torch

from visattn import lens

transformers = pytest.importorskip("transformers")

HIDDEN, HEADS, HEAD_DIM = 32, 4, 8
IMAGE_TOKEN = 99


def vision_kwargs() -> dict:
    return dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64,
                image_size=32, patch_size=8)


def tiny_vit():
    torch.manual_seed(0)
    return transformers.ViTModel(transformers.ViTConfig(**vision_kwargs())).eval()


def tiny_clip_vision():
    torch.manual_seed(0)
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision_kwargs())).eval()


def tiny_clip_text():
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                                         intermediate_size=64, vocab_size=100, max_position_embeddings=16,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.CLIPTextModel(config).eval()


def tiny_llava():
    torch.manual_seed(0)
    text = transformers.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                                    num_key_value_heads=2, intermediate_size=64, vocab_size=100, bos_token_id=None,
                                    eos_token_id=None, pad_token_id=None)
    vision = transformers.CLIPVisionConfig(**vision_kwargs())
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                                      vision_feature_layer=-1)
    return transformers.LlavaForConditionalGeneration(config).eval()


def llava_inputs() -> dict:
    ids = torch.tensor([[1, 2, 3] + [IMAGE_TOKEN] * 16 + [5, 6]])
    return {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32)}


def tiny_qwen2_vl():
    torch.manual_seed(0)
    text = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=2,
                intermediate_size=64, vocab_size=100, bos_token_id=None, eos_token_id=None,
                rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0})
    vision = dict(depth=2, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=HEADS, mlp_ratio=2, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=97, video_token_id=98,
                                        vision_start_token_id=96)
    return transformers.Qwen2VLForConditionalGeneration(config).eval()


def qwen_inputs() -> dict:
    ids = torch.tensor([[1, 2, 96] + [97] * 4 + [5, 6, 7]])
    return {"input_ids": ids, "pixel_values": torch.randn(16, 3 * 2 * 4 * 4),
            "image_grid_thw": torch.tensor([[1, 4, 4]]), "mm_token_type_ids": (ids == 97).int()}


def output_of(result) -> torch.Tensor:
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def run_captured(model, inputs, **kwargs):
    with torch.no_grad():
        expected = output_of(model(**inputs))
        with lens.capture(model, what=("probs", "logits", "q", "k", "v", "hidden"), **kwargs) as rec:
            out = output_of(model(**inputs))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    return rec


def causal(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def assert_probs_from_q_k(rec, layer: int, allowed: torch.Tensor | None = None) -> None:
    q, k = rec.get("q", layer).tensor, rec.get("k", layer).tensor
    logits = q @ k.transpose(-2, -1) * HEAD_DIM**-0.5
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(rec.get("probs", layer).tensor, logits.softmax(-1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("build", [tiny_vit, tiny_clip_vision], ids=["vit", "clip-vision"])
def test_vision_encoders_probs_grid_and_restored_implementation(build, calls):
    model = build()
    rec = run_captured(model, {"pixel_values": torch.randn(2, 3, 32, 32)})
    for layer in (0, 1):
        assert_probs_from_q_k(rec, layer)
        assert rec.get("hidden", layer).shape == {"batch": 2, "token": 17, "channel": HIDDEN}
    assert [(c.grid, c.num_prefix_tokens, c.image_tokens) for c in calls] == [((4, 4), 1, None)] * 2
    assert model.config._attn_implementation == "sdpa"


def test_eager_implementation_is_restored():
    model = tiny_clip_vision()
    model.set_attn_implementation("eager")
    run_captured(model, {"pixel_values": torch.randn(1, 3, 32, 32)})
    assert model.config._attn_implementation == "eager"


def test_clip_text_keeps_causal_and_padding_masks():
    model = tiny_clip_text()
    ids = torch.randint(3, 100, (2, 7))
    padding = torch.ones(2, 7, dtype=torch.long)
    padding[1, 5:] = 0
    rec = run_captured(model, {"input_ids": ids, "attention_mask": padding})
    allowed = causal(7) & padding.bool()[:, None, None, :]
    for layer in (0, 1):
        assert_probs_from_q_k(rec, layer, allowed)
        assert torch.all(rec.get("probs", layer).tensor[..., ~allowed.expand(2, HEADS, 7, 7)] == 0)


def test_llava_vision_and_language_layers(calls):
    model = tiny_llava()
    infos = lens.attention_layers(model)
    assert [i.name for i in infos] == [f"model.vision_tower.encoder.layers.{i}.self_attn" for i in (0, 1)] + [
        f"model.language_model.layers.{i}.self_attn" for i in (0, 1)]
    rec = run_captured(model, llava_inputs())
    assert_probs_from_q_k(rec, 0)
    for layer in (2, 3):
        assert_probs_from_q_k(rec, layer, causal(21))
        k = rec.get("k", layer).tensor
        assert k.shape[1] == HEADS and torch.equal(k[:, 0], k[:, 1]) and torch.equal(k[:, 2], k[:, 3])
    vision, language = calls[:2], calls[2:]
    assert all(c.grid == (4, 4) and c.num_prefix_tokens == 1 and c.image_tokens is None for c in vision)
    assert all(c.grid is None and torch.equal(c.image_tokens, torch.arange(3, 19)) for c in language)
    assert model.config._attn_implementation == "sdpa"
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"


def test_within_numbers_the_language_model_layers_only():
    model = tiny_llava()
    rec = run_captured(model, llava_inputs(), layers=[1], within="model.language_model")
    assert rec.names == {1: "model.language_model.layers.1.self_attn"}
    assert_probs_from_q_k(rec, 1, causal(21))
    with pytest.raises(ValueError, match="within='model.nothing' holds no attention layer"):
        lens.attention_layers(model, within="model.nothing")


def test_llava_generation_appends_per_step_and_keeps_image_tokens(calls):
    model = tiny_llava()
    with torch.no_grad(), lens.capture(model, layers=[3], what=("probs",)) as rec:
        model.generate(**llava_inputs(), max_new_tokens=3, do_sample=False)
    shapes = [r.tensor.shape[-2:] for r in rec.all("probs", 3)]
    assert shapes == [(21, 21), (1, 22), (1, 23)]
    language = [c for c in calls if c.layer == 3]
    assert len(language) == 3 and all(torch.equal(c.image_tokens, torch.arange(3, 19)) for c in language)


def test_qwen2_vl_rotary_language_and_vision_layers(calls):
    model = tiny_qwen2_vl()
    rec = run_captured(model, qwen_inputs())
    for layer in (0, 1):
        assert_probs_from_q_k(rec, layer)
        assert rec.get("hidden", layer).shape == {"batch": 1, "token": 16, "channel": HIDDEN}
    for layer in (2, 3):
        assert_probs_from_q_k(rec, layer, causal(10))
    vision, language = calls[:2], calls[2:]
    assert all(c.grid is None and c.image_tokens is None for c in vision)
    assert all(torch.equal(c.image_tokens, torch.arange(3, 7)) for c in language)
    assert model.config.vision_config._attn_implementation == "sdpa"


def test_qwen2_vl_q_k_are_rotated():
    model = tiny_qwen2_vl()
    attention = model.model.language_model.layers[0].self_attn
    inputs = []
    hook = attention.register_forward_pre_hook(lambda m, a, kw: inputs.append(kw["hidden_states"]), with_kwargs=True)
    rec = run_captured(model, qwen_inputs(), layers=[2])
    hook.remove()
    unrotated = attention.q_proj(inputs[0]).view(1, 10, HEADS, HEAD_DIM).transpose(1, 2)
    q = rec.get("q", 2).tensor
    torch.testing.assert_close(q.norm(dim=-1), unrotated.norm(dim=-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(q[:, :, 1:], unrotated[:, :, 1:], atol=1e-4)


def test_unsupported_models_are_refused_by_class_name():
    with pytest.raises(TypeError, match="cannot hook Sequential"):
        lens.attention_layers(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        lens.capture("vit").__enter__()


def test_image_positions_per_batch_layout():
    from visattn.lens.adapters.huggingface import image_positions

    same = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(image_positions(same), torch.tensor([1, 2]))
    shifted = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(image_positions(shifted), torch.tensor([[1, 2], [0, 1]]))
    assert image_positions(torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)) is None
