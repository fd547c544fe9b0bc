"""VHR (arXiv 2412.13949): the text-only pass runs through prepare(run); heads above the per-layer VHD median are
scaled by alpha, chosen layer by layer in the edited pass and kept for later steps; alpha = 1 changes nothing."""

from __future__ import annotations

import pytest
import torch

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import VisionHeadReinforcement

HEADS, DIM, LAYERS = 4, 16, 3


class TinyAttentionStack:
    """Attention-only residual layers routed through ``lens_attention``; ``image`` prepends 5 image tokens."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.qkv = [torch.randn(DIM, 3 * DIM, generator=g, dtype=torch.float64) / DIM**0.5 for _ in range(LAYERS)]
        self.proj = [torch.randn(DIM, DIM, generator=g, dtype=torch.float64) / DIM**0.5 for _ in range(LAYERS)]
        self.text = torch.randn(1, 6, DIM, generator=g, dtype=torch.float64)
        self.image = torch.randn(1, 5, DIM, generator=g, dtype=torch.float64)
        self.head_outputs: list[torch.Tensor] = []

    def __call__(self, image: bool = True, scale_heads: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        x = torch.cat([self.image, self.text], 1) if image else self.text
        self.head_outputs = []
        for layer in range(LAYERS):
            b, n, _ = x.shape
            q, k, v = (x @ self.qkv[layer]).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
            call = AttentionCall(layer=layer, name=f"blocks.{layer}", q=q, k=k, v=v, scale=0.5,
                                 image_tokens=torch.arange(5) if image else None)
            if STATE.active:
                out, _ = lens_attention(call)
            else:
                out = torch.softmax(q @ k.transpose(-2, -1) * 0.5, -1) @ v
                if scale_heads is not None and layer in scale_heads:
                    out = out * scale_heads[layer].view(1, -1, 1, 1)
            self.head_outputs.append(out)
            x = x + out.transpose(1, 2).reshape(b, n, DIM) @ self.proj[layer]
        return x


def apply(model: TinyAttentionStack, edit: VisionHeadReinforcement, **inputs) -> torch.Tensor:
    STATE.edits[:] = [edit]
    try:
        edit.prepare(lambda **overrides: model(**{**inputs, **overrides}))
        return model(**inputs)
    finally:
        STATE.edits.clear()


def test_reinforces_heads_above_the_median_layer_by_layer():
    model = TinyAttentionStack()
    model(image=False)
    text_last = [out[:, :, -1] for out in model.head_outputs]
    edit = VisionHeadReinforcement({"image": False}, alpha=2.0, layers=[0, 2])
    edited = apply(model, edit, image=True)
    scale: dict[int, torch.Tensor] = {}
    for layer in range(LAYERS):
        model(image=True, scale_heads=scale)
        vhd = (model.head_outputs[layer][0, :, -1] - text_last[layer][0]).norm(dim=-1)
        if layer in (0, 2):
            chosen = vhd > vhd.sort().values[(HEADS - 1) // 2]
            assert chosen.sum() == HEADS // 2
            assert torch.equal(edit.chosen[layer][0], chosen)
            scale[layer] = torch.where(chosen, 2.0, 1.0).to(torch.float64)
    torch.testing.assert_close(edited, model(image=True, scale_heads=scale), atol=1e-12, rtol=1e-10)
    assert 1 not in edit.chosen


def test_heads_chosen_at_the_first_step_are_kept():
    model = TinyAttentionStack(1)
    edit = VisionHeadReinforcement({"image": False}, alpha=3.0)
    apply(model, edit, image=True)
    first = {layer: chosen.clone() for layer, chosen in edit.chosen.items()}
    STATE.edits[:] = [edit]
    model.image = model.image * 5.0
    model(image=True)
    STATE.edits.clear()
    assert all(torch.equal(edit.chosen[layer], first[layer]) for layer in first)


def test_alpha_one_changes_nothing_and_precomputed_outputs_work():
    model = TinyAttentionStack(2)
    plain = model(image=True)
    assert torch.equal(apply(model, VisionHeadReinforcement({"image": False}, alpha=1.0), image=True), plain)
    model(image=False)
    outputs = {layer: out[:, :, -1] for layer, out in enumerate(model.head_outputs)}
    by_pass = apply(model, VisionHeadReinforcement({"image": False}), image=True)
    by_outputs = apply(model, VisionHeadReinforcement(text_head_outputs=outputs), image=True)
    torch.testing.assert_close(by_outputs, by_pass, atol=0, rtol=0)


def test_missing_text_pass_and_bad_input_are_named():
    model = TinyAttentionStack(3)
    with pytest.raises(ValueError, match="no text-only head outputs for layer 0"):
        STATE.edits[:] = [VisionHeadReinforcement(text_head_outputs={1: torch.zeros(1, HEADS, 4)})]
        model(image=True)
    STATE.edits.clear()
    with pytest.raises(RuntimeError, match="recorded no attention layer"):
        VisionHeadReinforcement({"image": False}).prepare(lambda **kw: None)
    with pytest.raises(ValueError, match="exactly one of text_only"):
        VisionHeadReinforcement()
    with pytest.raises(ValueError, match=r"heads \[9\] out of range"):
        apply(model, VisionHeadReinforcement({"image": False}, heads=[9]), image=True)
