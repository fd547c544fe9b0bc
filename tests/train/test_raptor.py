"""visattn.train.raptor: phases planted in a similarity matrix (and in a teacher's hidden states) are recovered, the
teacher's states are its own, a tiny fit brings the surrogate toward its teacher, bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from visattn.lens.metrics.phases import max_cut_phases
from visattn.models.raptor import phases_from_sizes, raptor_from_teacher
from visattn.train.raptor import evaluate_raptor, fit_raptor, teacher_phases, teacher_states

pytestmark = pytest.mark.usefixtures("one_thread")

ANGLES = {2: (0, 60), 3: (0, 20, 80), 4: (0, 20, 80, 100)}
"""Directions (degrees) of the planted phases: the farthest apart split first, as in trained ViTs, where the layer
dissimilarity grows with the distance in depth. (Three phases at equal steps are a tie for max-cut: each middle
layer adds the same cut on either side, see visattn.lens.metrics.phases.)"""


def _planted_directions(sizes: list[int], noise: float, seed: int) -> torch.Tensor:
    """One 2-d unit direction per layer, its phase's angle plus Gaussian noise ``noise``."""
    label = torch.tensor([p for p, size in enumerate(sizes) for _ in range(size)])
    theta = torch.tensor(ANGLES[len(sizes)], dtype=torch.float64)[label] * math.pi / 180
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([theta.cos(), theta.sin()], -1) + noise * torch.randn(len(label), 2, generator=generator,
                                                                               dtype=torch.float64)


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(2, 6), min_size=2, max_size=4), seed=st.integers(0, 2**16))
def test_max_cut_recovers_phases_planted_in_a_similarity_matrix(sizes, seed):
    a = _planted_directions(sizes, 0.01, seed)
    weights = (1 - nn.functional.cosine_similarity(a[:, None], a[None], dim=-1)).fill_diagonal_(0)
    assert tuple(map(tuple, max_cut_phases(weights, eps=0.004, min_size=1))) == phases_from_sizes(sizes)


class _Planted(nn.Module):
    """A stand-in block: every token becomes its phase's direction (in the first two channels) plus noise."""

    def __init__(self, direction: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.register_buffer("direction", torch.cat([direction.float(), torch.zeros(dim - 2)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.direction + 0.01 * torch.randn_like(x)


def test_teacher_phases_recover_phases_planted_in_hidden_states():
    """End to end: hooks on the teacher's blocks, the lens's dissimilarity of class and mean-patch tokens, max-cut."""
    sizes = [3, 2, 4]
    teacher = VisionTransformer(img_size=16, patch_size=8, embed_dim=8, depth=9, num_heads=2).eval()
    directions = _planted_directions(sizes, 0.0, 0)
    teacher.blocks = nn.Sequential(*[_Planted(d, 8) for d in directions])
    torch.manual_seed(0)
    phases, weights = teacher_phases(teacher, torch.randn(6, 3, 16, 16), eps=0.004)
    assert phases == phases_from_sizes(sizes)
    assert weights.shape == (9, 9) and torch.allclose(weights, weights.T)


def test_teacher_states_are_the_teachers_own():
    torch.manual_seed(0)
    teacher = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, reg_tokens=2).eval()
    x = torch.randn(2, 3, 16, 16)
    states = teacher_states(teacher, x)
    assert states.shape == (4, 2, 16 + 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(states[0], teacher.norm_pre(teacher._pos_embed(teacher.patch_embed(x))))
        torch.testing.assert_close(teacher.norm(states[-1]), teacher.forward_features(x))
        inter = teacher.forward_intermediates(x, output_fmt="NLC", intermediates_only=True, norm=False,
                                              return_prefix_tokens=True)
        for i, (patches, prefix) in enumerate(inter):
            torch.testing.assert_close(states[i + 1], torch.cat([prefix, patches], dim=1))
    assert not teacher.blocks[0]._forward_pre_hooks and not teacher.blocks[0]._forward_hooks


def _teacher(seed: int = 0) -> VisionTransformer:
    """A tiny ViT whose blocks move the hidden state a lot (weights scaled up), so the fit has something to learn."""
    torch.manual_seed(seed)
    teacher = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=4, num_heads=2, num_classes=3,
                                mlp_ratio=2.0)
    with torch.no_grad():
        for p in teacher.blocks.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return teacher


def test_a_tiny_fit_brings_the_surrogate_toward_its_teacher():
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(2))
    phases = [[0, 1], [2, 3]]
    torch.manual_seed(0)
    fresh = evaluate_raptor(raptor_from_teacher(teacher, phases, mlp_ratio=2.0), teacher, (x, y))
    surrogate, report = fit_raptor(teacher, (x, y), phases=phases, phase_steps=25, joint_steps=25, batch_size=16,
                                   lr=3e-3, mlp_ratio=2.0)
    assert report.phases == ((0, 1), (2, 3)) and report.dissimilarity is None and report.num_phases == 2
    assert [len(losses) for losses in report.phase_losses] == [25, 25] and len(report.autoregressive_losses) == 25
    losses = report.autoregressive_losses
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses
    # a fresh surrogate is the identity map (R^2 about 0.5 / 0.25 here: the residual stream carries over); the fit
    # removes a sixth of the variance it leaves unexplained within 50 steps
    unexplained = [(1 - after) / (1 - before) for after, before in zip(report.phase_r2, fresh["phase_r2"], strict=True)]
    assert all(ratio < 0.85 for ratio in unexplained), (report.phase_r2, fresh["phase_r2"])
    assert report.teacher_accuracy == fresh["teacher_accuracy"] and report.evaluated_on == "training data"
    assert report.accuracy_fraction == report.surrogate_accuracy / report.teacher_accuracy
    assert not surrogate.training and teacher.training  # the teacher's mode is put back
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert all(p.grad is None for p in teacher.parameters())


def test_fit_finds_phases_and_takes_batches_from_an_iterable():
    teacher = _teacher(1)
    x = torch.randn(32, 3, 16, 16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long)),
                                         batch_size=8)
    surrogate, report = fit_raptor(teacher, loader, eval_data=x, phase_steps=2, joint_steps=2, eps=0.05)
    assert report.dissimilarity.shape == (4, 4) and sum(map(len, report.phases)) == 4
    assert surrogate.phases == report.phases and report.evaluated_on == "eval_data"
    assert report.teacher_accuracy is None and report.accuracy_fraction is None and 0 <= report.agreement <= 1


def test_bad_input_is_refused():
    teacher = _teacher()
    x = torch.randn(8, 3, 16, 16)
    with pytest.raises(ValueError, match="phases must cover layers 0..3"):
        fit_raptor(teacher, x, phases=[[0, 1], [2]], phase_steps=0, joint_steps=0)
    with pytest.raises(ValueError, match="repeated"):
        fit_raptor(teacher, x, phases=[[0, 1, 2], [2, 3]], phase_steps=0, joint_steps=0)
    with pytest.raises(TypeError, match="teacher must be a timm VisionTransformer"):
        fit_raptor(nn.Sequential(nn.Linear(2, 2)), x, phases=[[0]], phase_steps=0, joint_steps=0)
    with pytest.raises(ValueError, match=r"data images must be a non-empty \(B, C, H, W\)"):
        fit_raptor(teacher, torch.randn(3, 16, 16), phases=[[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="eval_data labels must have shape"):
        fit_raptor(teacher, x, phases=[[0, 1, 2, 3]], eval_data=(x, torch.zeros(5)))
    with pytest.raises(TypeError, match="data must be images"):
        fit_raptor(teacher, 3, phases=[[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        fit_raptor(teacher, x, phases=[[0, 1, 2, 3]], batch_size=0)
    with pytest.raises(ValueError, match="teacher_forcing_anneal must be a fraction"):
        fit_raptor(teacher, x, phases=[[0, 1, 2, 3]], teacher_forcing_anneal=2)
    with pytest.raises(ValueError, match="token_weights must be three numbers"):
        fit_raptor(teacher, x, phases=[[0, 1, 2, 3]], token_weights=(1.0, 1.0), phase_steps=0, joint_steps=0)
    with pytest.raises(TypeError, match="non-empty `blocks`"):
        teacher_states(nn.Linear(2, 2), x)


def test_evaluate_raptor_against_a_direct_computation():
    """Accuracies, agreement and per-phase R^2 = 1 - SS_res / SS_tot (over tokens, around the channel means), the
    sums streamed over batches of 3."""
    teacher = _teacher(2).eval()
    torch.manual_seed(0)
    surrogate = raptor_from_teacher(teacher, [[0], [1, 2], [3]], mlp_ratio=2.0).eval()
    for block in surrogate.recurrent_blocks:
        with torch.no_grad():
            block.ls1.gamma.fill_(0.3)
            block.ls2.gamma.fill_(0.3)
    x = torch.randn(10, 3, 16, 16)
    y = torch.randint(0, 3, (10,))
    measured = evaluate_raptor(surrogate, teacher, (x, y), batch_size=3)
    with torch.no_grad():
        states = teacher_states(teacher, x).double()
        h, r2 = states[0].float(), []
        outputs = []
        for step in surrogate.blocks:
            h = step(h)
            outputs.append(h.double())
        for end in (1, 3, 4):
            target = states[end].flatten(0, 1)
            residual = (outputs[end - 1].flatten(0, 1) - target).square().sum()
            r2.append(float(1 - residual / (target - target.mean(0)).square().sum()))
        teacher_top, surrogate_top = teacher(x).argmax(-1), surrogate(x).argmax(-1)
    assert measured["phase_r2"] == pytest.approx(r2, abs=1e-9)
    assert measured["teacher_accuracy"] == pytest.approx(float((teacher_top == y).float().mean()))
    assert measured["surrogate_accuracy"] == pytest.approx(float((surrogate_top == y).float().mean()))
    assert measured["agreement"] == pytest.approx(float((teacher_top == surrogate_top).float().mean()))
    assert min(r2) < 0.99


@pytest.mark.parametrize("anneal", [0.5, 0.0])
def test_first_phase_loss_is_the_stated_formula(anneal):
    """Step 0 of a phase: teacher forcing only (r = 1) is mean_l MSE(f(h_{l-1}, l), h_l); without annealing (r = 0)
    the block runs on its own outputs from the first teacher state of each contiguous run of the phase
    ([0, 1, 3]: runs [0, 1] and [3]), mean_l MSE(x_l, h_l)."""
    teacher = _teacher(3)
    x = torch.randn(12, 3, 16, 16)
    phases = [[0, 1, 3], [2]]
    _, report = fit_raptor(teacher, x, phases=phases, phase_steps=2, joint_steps=1, batch_size=5,
                           teacher_forcing_anneal=anneal, mlp_ratio=2.0, seed=7)
    torch.manual_seed(7)
    block = raptor_from_teacher(teacher, phases, mlp_ratio=2.0).recurrent_blocks[0]
    batch = x[torch.randint(12, (5,), generator=torch.Generator().manual_seed(7))]
    teacher.eval()
    with torch.no_grad():
        h = teacher_states(teacher, batch)
        step = [lambda state, layer=layer: block(state, torch.full((5,), float(layer + 1))) for layer in range(4)]
        if anneal:
            terms = [step[layer](h[layer]) - h[layer + 1] for layer in (0, 1, 3)]
        else:
            first = step[0](h[0])
            terms = [first - h[1], step[1](first) - h[2], step[3](h[3]) - h[4]]
        expected = sum(term.square().mean() for term in terms) / 3
    assert report.phase_losses[0][0] == pytest.approx(float(expected), rel=1e-5)
    assert all(math.isfinite(v) for losses in report.phase_losses for v in losses)


def test_joint_loss_token_weights():
    """0.45 / 0.10 / 0.45 over class, register and patch tokens; a group the model lacks is dropped and the rest
    renormalised."""
    from visattn.models.raptor import Raptor
    from visattn.train.raptor import _groups, _token_mse

    pred, target = torch.randn(2, 1 + 2 + 16, 8), torch.randn(2, 1 + 2 + 16, 8)
    mse = [(pred[:, s] - target[:, s]).square().mean() for s in (slice(0, 1), slice(1, 3), slice(3, None))]
    with torch.device("meta"):
        registers = Raptor([[0]], img_size=16, patch_size=4, embed_dim=8, num_heads=2, reg_tokens=2)
        plain = Raptor([[0]], img_size=16, patch_size=4, embed_dim=8, num_heads=2)
    weights = (0.45, 0.10, 0.45)
    torch.testing.assert_close(_token_mse(pred, target, _groups(registers, weights)),
                               0.45 * mse[0] + 0.10 * mse[1] + 0.45 * mse[2])
    torch.testing.assert_close(_token_mse(pred[:, 2:], target[:, 2:], _groups(plain, weights)),
                               (0.45 * (pred[:, 2:3] - target[:, 2:3]).square().mean()
                                + 0.45 * (pred[:, 3:] - target[:, 3:]).square().mean()) / 0.9)
    torch.testing.assert_close(_token_mse(pred, target, None), (pred - target).square().mean())
