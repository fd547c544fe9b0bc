"""A partial capture on a Hugging Face model leaves the other layers on the implementation they had: on an eager
model ``output_attentions`` keeps one map per layer at its index (it shrank when they were switched to SDPA)."""

from __future__ import annotations

import pytest
import torch

from visattn import lens

transformers = pytest.importorskip("transformers")


def tiny_vit(implementation: str):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                                    image_size=20, patch_size=4, attn_implementation=implementation)
    return transformers.ViTModel(config).eval()


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=50, bos_token_id=None,
                                      eos_token_id=None, pad_token_id=None, attn_implementation="eager")
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("layers", [[1], [0, 2]])
def test_eager_vit_keeps_every_layer_map_at_its_index(layers):
    model = tiny_vit("eager")
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        base = model(x, output_attentions=True)
        with lens.capture(model, layers=layers) as rec:
            out = model(x, output_attentions=True)
    assert len(out.attentions) == len(base.attentions) == 3
    for i in range(3):
        torch.testing.assert_close(out.attentions[i], base.attentions[i], atol=1e-6, rtol=1e-5)
    for i in layers:
        torch.testing.assert_close(rec.get("probs", i).tensor, base.attentions[i], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, base.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "eager"


def test_eager_causal_lm_gets_its_additive_mask_on_unrouted_layers():
    """Unrouted eager layers receive the lens's boolean mask turned into eager's additive one (a boolean mask
    added to the logits would leave the future visible)."""
    model = tiny_llama()
    ids = torch.tensor([[3, 7, 1, 9, 4, 2], [5, 5, 8, 1, 0, 6]])
    with torch.no_grad():
        base = model(input_ids=ids, output_attentions=True)
        with lens.capture(model, layers=[1]) as rec:
            out = model(input_ids=ids, output_attentions=True)
    assert len(out.attentions) == 3
    for i in (0, 2):
        assert torch.equal(out.attentions[i].triu(1), torch.zeros_like(out.attentions[i]))
        torch.testing.assert_close(out.attentions[i], base.attentions[i], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rec.get("probs", 1).tensor, base.attentions[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.logits, base.logits, atol=1e-5, rtol=1e-5)


def test_sdpa_model_stays_on_sdpa_and_nested_contexts_restore():
    model = tiny_vit("sdpa")
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        base = model(x).last_hidden_state
        with lens.capture(model, layers=[0]), lens.capture(model, layers=[0]) as inner:
            out = model(x).last_hidden_state
    torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)
    assert len(inner.calls(0)) == 1 and model.config._attn_implementation == "sdpa"
    from visattn.lens.adapters.huggingface import FALLBACK
    assert FALLBACK == {}
