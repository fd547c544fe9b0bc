"""Hedgehog conversion workflow: students, captured teacher weights (visattn and timm), loss decrease, errors."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from visattn.nn import Attention, HedgehogMixer, distill_attention, from_timm_attention, hedgehog_student
from visattn.nn.hedgehog_distill import attention_distillation_losses, attention_layers, layer_attention_weights

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mixer: str = "softmax") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, mixer=mixer, shape=(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


def toy_model(mixer: str = "softmax", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(ToyBlock(16, 2, mixer), ToyBlock(16, 2, mixer))
    with torch.no_grad():
        for block in model:
            block.attn.qkv.weight.mul_(4.0)
    return model


def toy_batches(count: int = 4, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 9, 16, generator=gen) for _ in range(count)]


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=2,
                             num_heads=2, mlp_ratio=2.0).eval()


def test_student_keeps_every_teacher_weight_and_swaps_the_mixers():
    teacher = toy_model()
    student = hedgehog_student(teacher)
    assert all(isinstance(layer.mixer, HedgehogMixer) for layer in attention_layers(student))
    assert not any(isinstance(layer.mixer, HedgehogMixer) for layer in attention_layers(teacher))
    teacher_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        if ".mixer." not in name:
            assert torch.equal(value, teacher_state[name])


def test_distillation_lowers_the_loss_and_only_trains_the_feature_maps():
    teacher, batches = toy_model(), toy_batches()
    student = hedgehog_student(teacher)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    with torch.no_grad():
        loss_before = [x.item() for x in attention_distillation_losses(teacher, student, batches[0])]
    distill_attention(teacher, student, batches, steps=40, lr=3e-2)
    with torch.no_grad():
        loss_after = [x.item() for x in attention_distillation_losses(teacher, student, batches[0])]
    assert all(a < 0.9 * b for a, b in zip(loss_after, loss_before, strict=True)), (loss_before, loss_after)
    for name, p in student.named_parameters():
        assert p.requires_grad
        assert torch.equal(p, before[name]) != (".mixer." in name), name
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())


def test_losses_equal_the_soft_cross_entropy_of_the_layer_weights():
    teacher, batch = toy_model(), toy_batches(1)[0]
    student = hedgehog_student(teacher)
    losses = attention_distillation_losses(teacher, student, batch)
    x = teacher[0].norm(batch)
    a = torch.softmax(teacher[0].attn.qkv_heads(x)[0] @ teacher[0].attn.qkv_heads(x)[1].transpose(-2, -1)
                      * 8 ** -0.5, dim=-1)
    a_hat = student[0].attn.mixer.attention_weights(*student[0].attn.qkv_heads(x)[:2], (3, 3))
    torch.testing.assert_close(losses[0], -(a * (a_hat + 1e-12).log()).sum(-1).mean())


def test_timm_teacher_weights_are_recomputed_from_q_and_k():
    model = tiny_vit()
    timm_layer = next(m for m in model.modules() if isinstance(m, TimmAttention))
    x = torch.randn(2, 17, 16)
    ours = from_timm_attention(timm_layer, "softmax", shape=(4, 4), num_prefix_tokens=1)
    q, k, _ = ours.qkv_heads(x)
    expected = torch.softmax(q @ k.transpose(-2, -1) * 8 ** -0.5, dim=-1)
    torch.testing.assert_close(layer_attention_weights(timm_layer, x), expected)


def test_timm_vit_converts_and_distills():
    teacher = tiny_vit()
    student = hedgehog_student(teacher)
    assert not any(isinstance(m, TimmAttention) for m in student.modules())
    assert len(attention_layers(student)) == 2
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(6, 1, 8, 8, generator=gen) * 3 for _ in range(3)]
    labels = torch.zeros(6, dtype=torch.long)
    batches = [(image, labels) for image in images]
    before = sum(x.item() for x in attention_distillation_losses(teacher, student, batches[0]))
    distill_attention(teacher, student, batches, steps=25, lr=3e-2)
    after = sum(x.item() for x in attention_distillation_losses(teacher, student, batches[0]))
    assert after < before
    assert student(images[0]).shape == (6, 3)


def test_bad_input_errors():
    teacher, batches = toy_model(), toy_batches(1)
    with pytest.raises(ValueError, match="mixer without parameters"):
        distill_attention(teacher, toy_model(seed=2), batches, steps=1)
    with pytest.raises(ValueError, match="teacher_model has 2 attention layers but student_model has 1"):
        distill_attention(teacher, nn.Sequential(hedgehog_student(teacher)[0]), batches, steps=1)
    student = hedgehog_student(teacher)
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        distill_attention(teacher, student, batches, steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        distill_attention(teacher, student, batches, lr=0.0)
    with pytest.raises(ValueError, match="batches must yield at least one batch"):
        distill_attention(teacher, student, iter([]), steps=1)
    with pytest.raises(ValueError, match="no attention layer to convert"):
        hedgehog_student(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="layer must be a visattn Attention or a timm Attention"):
        layer_attention_weights(nn.Linear(3, 3), torch.randn(1, 2, 3))
    causal = hedgehog_student(teacher, is_causal=True)
    with pytest.raises(ValueError, match="is causal"):
        distill_attention(teacher, causal, batches, steps=1)
