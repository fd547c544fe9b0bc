"""visattn.convert (Hedgehog, arXiv 2402.04347): the teacher untouched, only the mixers trained in stage 1, the
agreement and loss against a naive float64 formula, parameter-free mixers skipping stage 1, fine-tuning, accuracy,
bad input; and (slow) a small ViT trained on upscaled digits converted to Hedgehog keeping >= 95% of its accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import visattn
from visattn.nn import Attention, HedgehogMixer
from visattn.nn.hedgehog_distill import attention_layers, hedgehog_student
from visattn.tasks.digits import heldout_digits
from visattn.train.convert import attention_agreement, convert, evaluate_accuracy, finetune

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(seed: int = 0, classes: int = 3, sharpness: float = 4.0) -> VisionTransformer:
    """A random tiny ViT whose query/key weights are scaled by ``sharpness`` (peaked softmax rows, unlike a fresh
    init whose near-uniform rows every linear attention matches already)."""
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=classes, embed_dim=16, depth=2,
                              num_heads=2, mlp_ratio=2.0).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(sharpness)
    return model


def batches(count: int = 3, seed: int = 1, classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, classes, (8,), generator=gen))
            for _ in range(count)]


def test_visattn_convert_is_the_train_function():
    assert visattn.convert is convert


def test_distillation_trains_only_the_mixers_and_raises_the_agreement():
    teacher, data = tiny_vit(), batches()
    before = copy.deepcopy(teacher.state_dict())
    student, report = convert(teacher, "hedgehog", data, distill_steps=30, finetune_steps=0)
    assert all(torch.equal(value, before[key]) for key, value in teacher.state_dict().items())
    assert all(isinstance(layer.mixer, HedgehogMixer) for layer in attention_layers(student))
    teacher_weights = teacher.state_dict()
    for key, value in student.state_dict().items():
        if ".mixer." not in key:
            assert torch.equal(value, teacher_weights[key]), key
    assert report.distill_steps == 30 and report.finetune_steps == 0
    assert report.distilled_parameters == 2 * 2 * (2 * 8 * 8 + 2 * 8)
    assert len(report.agreement_initial.agreement) == 2
    assert report.agreement_distilled.mean_agreement > report.agreement_initial.mean_agreement
    assert sum(report.agreement_distilled.loss) < sum(report.agreement_initial.loss)
    assert report.agreement_final == report.agreement_distilled
    assert report.teacher_accuracy is None and report.accuracy_kept is None
    assert not student.training


def _naive_hedgehog_agreement(teacher: Attention, student: Attention, x: torch.Tensor) -> tuple[float, float]:
    """``mean_i sum_j min(a, a^)`` and ``-mean_i sum_j a log a^`` from the formulas, float64."""
    b, n, c = x.shape
    heads, d = teacher.num_heads, teacher.head_dim
    qkv = (x @ teacher.qkv.weight.T + teacher.qkv.bias).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    a = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)

    def phi(feature_map, t):
        u = torch.einsum("hoi,bhni->bhno", feature_map.weight, t) + feature_map.bias[None, :, None, :]
        return torch.cat([u.exp(), (-u).exp()], dim=-1)

    scores = phi(student.mixer.q_map, q) @ phi(student.mixer.k_map, k).transpose(-2, -1)
    a_hat = scores / scores.sum(dim=-1, keepdim=True)
    with torch.no_grad():
        return float(torch.minimum(a, a_hat).sum(-1).mean()), float(-(a * a_hat.log()).sum(-1).mean())


def test_agreement_and_loss_match_the_formulas_in_float64():
    torch.manual_seed(0)
    teacher = nn.Sequential(Attention(12, 3, qkv_bias=True, mixer="softmax", shape=(3, 3))).double()
    student = hedgehog_student(teacher)
    with torch.no_grad():
        for p in student[0].mixer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    measured = attention_agreement(teacher, student, x)
    agreement, loss = _naive_hedgehog_agreement(teacher[0], student[0], x)
    assert measured.agreement[0] == pytest.approx(agreement, rel=1e-10)
    assert measured.loss[0] == pytest.approx(loss, rel=1e-10)
    assert measured.agreement[0] < 0.99


def test_a_model_agrees_with_itself():
    teacher = tiny_vit()
    x = batches()[0][0]
    report = attention_agreement(teacher, copy.deepcopy(teacher), x)
    assert report.agreement == pytest.approx((1.0, 1.0), abs=1e-6)


@pytest.mark.parametrize("mixer", ["linear", "inline"])
def test_mixers_whose_parameters_do_not_shape_the_weights_skip_stage_one(mixer):
    _, report = convert(tiny_vit(), mixer, batches(), distill_steps=10, finetune_steps=0)
    assert report.distill_steps == 0 and report.distilled_parameters == 0
    assert report.notes and "stage 1 skipped" in report.notes[0]
    assert report.agreement_distilled == report.agreement_initial


@pytest.mark.parametrize("mixer", ["taylor", "l2vit_linear"])
def test_other_linear_mixers_are_distilled(mixer):
    _, report = convert(tiny_vit(sharpness=12.0), mixer, batches(), distill_steps=15, finetune_steps=0)
    assert report.distilled_parameters > 0
    assert sum(report.agreement_distilled.loss) < sum(report.agreement_initial.loss)


def test_a_visattn_vit_converts():
    import timm

    import visattn.models  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("visattn_vit_tiny_patch16_224", img_size=8, patch_size=2, in_chans=1, depth=1,
                              embed_dim=16, num_heads=2, num_classes=3).eval()
    student, report = convert(model, "hedgehog", batches(), eval_data=batches(seed=2), distill_steps=5,
                              finetune_steps=2)
    assert isinstance(attention_layers(student)[0].mixer, HedgehogMixer)
    assert isinstance(attention_layers(model)[0].mixer, visattn.nn.SoftmaxMixer)
    assert report.accuracy_kept == pytest.approx(report.final_accuracy / report.teacher_accuracy)
    assert "hedgehog" in report.summary()


def test_finetune_lowers_the_task_loss():
    model, data = tiny_vit(), batches(count=1)
    x, y = data[0]
    with torch.no_grad():
        before = F.cross_entropy(model(x), y)
    finetune(model, data, steps=30, lr=3e-3)
    with torch.no_grad():
        assert F.cross_entropy(model(x), y) < 0.7 * before


def test_evaluate_accuracy_counts_correct_labels_and_restores_the_mode():
    model = nn.Linear(4, 3).train()
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))
        model.bias.zero_()
    x = torch.eye(4)[:3] * 2
    data = [(x, torch.tensor([0, 1, 0])), (x[:1], torch.tensor([0]))]
    assert evaluate_accuracy(model, data) == pytest.approx(3 / 4)
    assert model.training


def test_bad_input_is_refused():
    model, data = tiny_vit(), batches()
    with pytest.raises(TypeError, match="model"):
        convert("not a model", "hedgehog", data)
    with pytest.raises(TypeError, match="mixer"):
        convert(model, 3, data)
    with pytest.raises(ValueError, match="unknown mixer"):
        convert(model, "no_such_mixer", data)
    with pytest.raises(ValueError, match="softmax"):
        convert(model, "softmax", data)
    with pytest.raises(ValueError, match="data"):
        convert(model, "hedgehog", None)
    with pytest.raises(ValueError, match="re-iterable"):
        convert(model, "hedgehog", iter(data))
    with pytest.raises(ValueError, match="distill_steps"):
        convert(model, "hedgehog", data, distill_steps=-1)
    with pytest.raises(ValueError, match="finetune_steps"):
        convert(model, "hedgehog", data, finetune_steps=1.5)
    with pytest.raises(ValueError, match="eval_data"):
        convert(model, "hedgehog", data, eval_data=[torch.zeros(2, 1, 8, 8)], distill_steps=0, finetune_steps=0)
    with pytest.raises(ValueError, match="steps"):
        finetune(model, data, steps=0)


def _upscaled_digits(side: int) -> tuple[list, list]:
    (train_x, train_y), (test_x, test_y) = heldout_digits(side)
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))
    train = [(train_x[order[i : i + 64]], train_y[order[i : i + 64]]) for i in range(0, len(order), 64)]
    return train, [(test_x, test_y)]


@pytest.mark.slow
def test_hedgehog_conversion_of_a_digits_vit_keeps_95_percent_of_its_accuracy():
    """A ViT trained here on 16 x 16 upscaled digits (16 patches), converted to Hedgehog: distillation then
    fine-tuning keeps >= 95% of the softmax model's test accuracy; distillation alone already raises agreement."""
    train, test = _upscaled_digits(16)
    torch.manual_seed(0)
    teacher = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=2,
                                num_heads=4, mlp_ratio=2.0)
    finetune(teacher, train, steps=400, lr=3e-3, weight_decay=0.05)
    student, report = convert(teacher, "hedgehog", train, eval_data=test, distill_steps=100, finetune_steps=100,
                              finetune_lr=5e-4)
    assert report.teacher_accuracy > 0.88, report.summary()
    assert report.agreement_distilled.mean_agreement > report.agreement_initial.mean_agreement, report.summary()
    assert report.accuracy_kept >= 0.95, report.summary()
    assert evaluate_accuracy(student, test) == report.final_accuracy
