"""``visattn.lens.edit``: checks, prepare(run), exactly-targeted changes (seen by capture), restoration."""

from __future__ import annotations

import pytest
import timm
import torch

import visattn
from visattn import lens
from visattn.lens import STATE, Edit

HEADS, HEAD_DIM = 4, 8


class ScaleLogits(Edit):
    """Multiply the pre-softmax logits of the chosen heads by ``factor`` (a test edit)."""

    def __init__(self, factor: float, layers=None, heads=None) -> None:
        super().__init__(layers, heads)
        self.factor = factor

    def edit_logits(self, logits, call):
        return self.restrict(logits * self.factor, logits)


class RunsTheModel(Edit):
    """Captures probabilities of the unedited model on other inputs in ``prepare`` (like VHR's extra pass)."""

    def __init__(self, **overrides) -> None:
        super().__init__()
        self.overrides = overrides
        self.seen = []

    def prepare(self, run):
        output, recording = run.capture(what=("probs",), layers=[0], **self.overrides)
        self.seen.append((run.layers, output, recording))


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=HEADS).eval()


@pytest.fixture
def model():
    return tiny_vit()


@pytest.fixture
def image():
    return torch.randn(2, 3, 32, 32)


def logits_from_q_k(rec, layer):
    q, k = rec.get("q", layer).tensor, rec.get("k", layer).tensor
    return q @ k.transpose(-2, -1) * HEAD_DIM**-0.5


def test_edit_changes_exactly_the_chosen_layer_and_head(model, image):
    with torch.no_grad():
        with lens.capture(model, what=("logits", "q", "k")) as plain:
            baseline = model(image)
        with lens.edit(model, [ScaleLogits(3.0, layers=[0], heads=[1])]), \
                lens.capture(model, what=("logits", "q", "k")) as edited:
            out = model(image)
    before, after = plain.get("logits", 0).tensor, edited.get("logits", 0).tensor
    torch.testing.assert_close(after[:, 1], 3.0 * before[:, 1])
    torch.testing.assert_close(after[:, [0, 2, 3]], before[:, [0, 2, 3]])
    torch.testing.assert_close(edited.get("logits", 1).tensor, logits_from_q_k(edited, 1))
    assert not torch.allclose(edited.get("logits", 1).tensor, plain.get("logits", 1).tensor)
    assert not torch.allclose(out, baseline)


def test_neutral_edit_leaves_logits_and_outputs_unchanged(model, image):
    with torch.no_grad():
        baseline = model(image)
        with lens.capture(model, what="logits") as plain:
            model(image)
        with lens.edit(model, [ScaleLogits(1.0), Edit()]), lens.capture(model, what="logits") as edited:
            out = model(image)
    torch.testing.assert_close(out, baseline, atol=1e-5, rtol=1e-5)
    for layer in (0, 1):
        torch.testing.assert_close(edited.get("logits", layer).tensor, plain.get("logits", layer).tensor)


def test_edit_routes_only_the_layers_it_acts_on_and_restores(model, image):
    with lens.edit(model, ScaleLogits(2.0, layers=[1])) as active:
        assert isinstance(active[0], ScaleLogits) and STATE.edits == active
        assert "forward" not in model.blocks[0].attn.__dict__ and "forward" in model.blocks[1].attn.__dict__
    assert STATE.edits == []
    assert all(block.attn.fused_attn and "forward" not in block.attn.__dict__ for block in model.blocks)


def test_bad_layers_heads_and_edits_are_refused(model):
    with pytest.raises(ValueError, match=r"ScaleLogits: layers \[2\] out of range; the model has 2 layers"):
        lens.edit(model, [ScaleLogits(2.0, layers=[0, 2])]).__enter__()
    with pytest.raises(ValueError, match=r"ScaleLogits: heads \[4\] out of range; the model has 4 heads"):
        lens.edit(model, [ScaleLogits(2.0, heads=[4])]).__enter__()
    with pytest.raises(TypeError, match="edits must be a visattn.lens.Edit or a sequence of them"):
        lens.edit(model, ["scale"]).__enter__()
    with pytest.raises(TypeError, match="inputs must be a mapping"):
        lens.edit(model, [], inputs=[1]).__enter__()
    assert STATE.edits == []


def test_edit_on_an_observed_only_layer_is_refused():
    model = torch.nn.Sequential(visattn.Attention(16, 2, shape=(3, 3)),
                                visattn.Attention(16, 2, mixer="linear", shape=(3, 3)))
    with pytest.raises(ValueError, match=r"acts on layer 1 \('1'\), whose LinearAttentionMixer does not compute"):
        lens.edit(model, [ScaleLogits(2.0)]).__enter__()
    with lens.edit(model, [ScaleLogits(2.0, layers=[0])]):
        model(torch.randn(1, 9, 16))


def test_prepare_runs_the_unedited_model_on_overridden_inputs(model, image):
    other = torch.randn(1, 3, 32, 32)
    probe = RunsTheModel(x=other)
    with torch.no_grad():
        with lens.capture(model, layers=0) as plain:
            expected = model(other)
        with lens.edit(model, [ScaleLogits(5.0), probe], inputs={"x": image}):
            pass
    ((layers, output, recording),) = probe.seen
    assert [info.name for info in layers] == ["blocks.0.attn", "blocks.1.attn"]
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(recording.get("probs", 0).tensor, plain.get("probs", 0).tensor)


def test_prepare_that_runs_the_model_needs_inputs(model):
    with pytest.raises(ValueError, match=r"RunsTheModel.prepare runs the model: pass the model's keyword inputs"):
        lens.edit(model, [RunsTheModel()]).__enter__()
    assert STATE.edits == [] and STATE.recorders == []


def test_edits_act_on_their_own_model_only(image):
    first, second = tiny_vit(), tiny_vit()
    with torch.no_grad():
        expected = second(image)
        with lens.edit(first, [ScaleLogits(4.0)]), lens.capture(second, what=("logits", "q", "k")) as rec:
            out = second(image)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rec.get("logits", 0).tensor, logits_from_q_k(rec, 0))


def test_edits_restored_after_an_error(model, image):
    with pytest.raises(RuntimeError, match="inside"), lens.edit(model, [ScaleLogits(2.0)]):
        raise RuntimeError("inside")
    assert STATE.edits == [] and all("forward" not in block.attn.__dict__ for block in model.blocks)


def test_edit_a_language_model_head_of_llava():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    text = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS,
                                    num_key_value_heads=2, intermediate_size=64, vocab_size=100, bos_token_id=None,
                                    eos_token_id=None, pad_token_id=None)
    vision = transformers.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS,
                                           intermediate_size=64, image_size=32, patch_size=8)
    model = transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=99, vision_feature_layer=-1)
    ).eval()
    inputs = {"input_ids": torch.tensor([[1, 2] + [99] * 16 + [5]]), "pixel_values": torch.randn(1, 3, 32, 32)}
    scope = "model.language_model"
    with torch.no_grad():
        with lens.capture(model, what="logits", within=scope) as plain:
            model(**inputs)
        with lens.edit(model, [ScaleLogits(2.0, layers=[1], heads=[3])], within=scope), \
                lens.capture(model, what="logits", within=scope) as edited:
            model(**inputs)
    torch.testing.assert_close(edited.get("logits", 0).tensor, plain.get("logits", 0).tensor)
    before, after = plain.get("logits", 1).tensor, edited.get("logits", 1).tensor
    torch.testing.assert_close(after[:, 3], 2.0 * before[:, 3])
    torch.testing.assert_close(after[:, :3], before[:, :3])
    assert model.config.text_config._attn_implementation == "sdpa"
