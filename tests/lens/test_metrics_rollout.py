"""Attention rollout (arXiv 2005.00928) and gradient rollout (arXiv 2012.09838): identity maps roll out to the
identity, the product order, a naive per-image loop in float64, gradient weighting closed forms, the discard filter,
the class-token map and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens.metrics import attention_rollout, fuse_heads, gradient_rollout, rollout, token_map


def random_probs(layers: int, b: int, h: int, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(layers, b, h, n, n, generator=gen, dtype=torch.float64) * 2, dim=-1)


def naive_rollout(fused_per_layer: list[torch.Tensor]) -> torch.Tensor:
    """One image: R = A^_L ... A^_1 with A^ = rownorm((A + I) / 2), written row by row."""
    n = fused_per_layer[0].shape[-1]
    result = torch.eye(n, dtype=torch.float64)
    for fused in fused_per_layer:
        step = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            row = [(float(fused[i, j]) + (1.0 if i == j else 0.0)) / 2 for j in range(n)]
            total = sum(row)
            step[i] = torch.tensor([r / total for r in row], dtype=torch.float64)
        result = step @ result
    return result


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 5), b=st.integers(1, 3), h=st.integers(1, 4), n=st.integers(1, 12),
       fusion=st.sampled_from(["mean", "max", "min"]))
def test_rollout_of_identity_maps_is_the_identity(layers, b, h, n, fusion):
    probs = torch.eye(n, dtype=torch.float64).expand(layers, b, h, n, n)
    expected = torch.eye(n, dtype=torch.float64).expand(b, n, n)
    assert torch.equal(attention_rollout(probs, head_fusion=fusion), expected)
    assert torch.equal(gradient_rollout(probs, torch.ones_like(probs)), expected)


def test_one_layer_is_half_attention_plus_half_identity():
    probs = random_probs(1, 2, 3, 5)
    expected = (probs[0].mean(dim=1) + torch.eye(5, dtype=torch.float64)) / 2
    torch.testing.assert_close(attention_rollout(probs), expected)


def test_later_layers_multiply_on_the_left():
    first = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)   # everyone reads token 1
    second = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)  # everyone reads token 0
    step1, step2 = (first + torch.eye(2)) / 2, (second + torch.eye(2)) / 2
    probs = torch.stack([first, second]).view(2, 1, 1, 2, 2)
    torch.testing.assert_close(attention_rollout(probs)[0], step2 @ step1)
    assert not torch.allclose(step2 @ step1, step1 @ step2)


@settings(max_examples=20, deadline=None)
@given(layers=st.integers(1, 4), b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(2, 9),
       fusion=st.sampled_from(["mean", "max", "min"]), seed=st.integers(0, 1000))
def test_rollout_equals_a_naive_loop_and_keeps_rows_stochastic(layers, b, h, n, fusion, seed):
    probs = random_probs(layers, b, h, n, seed)
    got = attention_rollout(list(probs), head_fusion=fusion)
    for image in range(b):
        fused = [fuse_heads(probs[layer, image], fusion) for layer in range(layers)]
        torch.testing.assert_close(got[image], naive_rollout(fused))
    torch.testing.assert_close(got.sum(-1), torch.ones(b, n, dtype=torch.float64))


def test_head_fusions():
    probs = torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]]], dtype=torch.float64)   # (heads, 1, 2)
    torch.testing.assert_close(fuse_heads(probs, "mean"), torch.tensor([[0.4, 0.6]], dtype=torch.float64))
    torch.testing.assert_close(fuse_heads(probs, "max"), torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    torch.testing.assert_close(fuse_heads(probs, "min"), torch.tensor([[0.2, 0.4]], dtype=torch.float64))


def test_discard_zeroes_the_smallest_entries_but_the_class_token_own_as_vit_explain():
    fused = torch.tensor([[[0.5, 0.1, 0.4], [0.3, 0.3, 0.4], [0.05, 0.9, 0.05]]], dtype=torch.float64)
    # 9 entries * 0.34 -> the 3 smallest of all entries: 0.05 (2, 0), 0.05 (2, 2) on the diagonal, 0.1 (0, 1)
    kept = fused.clone()
    kept[0, 2, 0] = kept[0, 2, 2] = kept[0, 0, 1] = 0.0
    step = (kept[0] + torch.eye(3, dtype=torch.float64)) / 2
    torch.testing.assert_close(rollout(fused.unsqueeze(0), discard_ratio=0.34)[0], step / step.sum(-1, keepdim=True))
    torch.testing.assert_close(rollout(fused.unsqueeze(0), discard_ratio=0.0), rollout(fused.unsqueeze(0)))
    # int(9 * 0.23) = 2 smallest: 0.01 at [0, 0] (the class token's own entry, spared) and 0.15 at (1, 0)
    fused = torch.tensor([[[0.01, 0.5, 0.49], [0.15, 0.6, 0.25], [0.3, 0.3, 0.4]]], dtype=torch.float64)
    kept = fused.clone()
    kept[0, 1, 0] = 0.0
    step = (kept[0] + torch.eye(3, dtype=torch.float64)) / 2
    torch.testing.assert_close(rollout(fused.unsqueeze(0), discard_ratio=0.23)[0], step / step.sum(-1, keepdim=True))


def test_gradient_rollout_weights_by_the_positive_part_of_attention_times_gradient():
    probs = random_probs(2, 1, 2, 4, seed=3)
    ones = torch.ones_like(probs)
    torch.testing.assert_close(gradient_rollout(probs, ones), attention_rollout(probs))
    # negative gradients everywhere: nothing survives the positive part, only the residual identity
    assert torch.equal(gradient_rollout(probs, -ones), torch.eye(4, dtype=torch.float64).expand(1, 4, 4))
    # positive part before or after the head mean: head 0 weighted +1, head 1 weighted -1
    grads = torch.stack([ones[:, :, 0], -ones[:, :, 1]], dim=2)
    per_head = [probs[layer, :, 0].clamp(min=0) / 2 for layer in range(2)]
    after = [((probs[layer, :, 0] - probs[layer, :, 1]) / 2).clamp(min=0) for layer in range(2)]
    torch.testing.assert_close(gradient_rollout(probs, grads), rollout(per_head))
    torch.testing.assert_close(gradient_rollout(probs, grads, positive="after_mean"), rollout(after))


def test_gradient_rollout_from_autograd_through_a_tiny_two_layer_attention():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(8, 8, generator=gen, dtype=torch.float64) / 3 for _ in range(2)]
    probs = []
    for w in weights:
        p = torch.softmax((x @ w) @ x.transpose(-2, -1), dim=-1).unsqueeze(1)   # (1, 1 head, 5, 5)
        probs.append(p)
        x = x + p[:, 0] @ x
    score = x[0, 0].sum()
    grads = torch.autograd.grad(score, probs)
    expected = rollout([(p * g).clamp(min=0).mean(1) for p, g in zip(probs, grads, strict=True)])
    torch.testing.assert_close(gradient_rollout([p.detach() for p in probs], list(grads)), expected)


def test_token_map_is_the_query_row_over_the_grid():
    relevance = torch.arange(2 * 7 * 7, dtype=torch.float64).view(2, 7, 7)
    got = token_map(relevance, (2, 3), num_prefix_tokens=1, query=0)
    assert got.shape == (2, 2, 3)
    torch.testing.assert_close(got[1], relevance[1, 0, 1:].view(2, 3))


def test_rollout_gradient():
    logits = torch.randn(2, 1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: attention_rollout(torch.softmax(x, -1)), (logits,))


def test_bad_input_names_the_argument():
    probs = random_probs(2, 1, 2, 4)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        attention_rollout(probs, head_fusion="median")
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        attention_rollout(probs, discard_ratio=1.0)
    with pytest.raises(ValueError, match=r"probs must be \(layers, ...\) with 5 dims"):
        attention_rollout(probs[0])
    with pytest.raises(ValueError, match=r"grads \(2, 1, 2, 4, 3\) must have the shape of probs"):
        gradient_rollout(probs, probs[..., :3])
    with pytest.raises(ValueError, match="positive must be one of"):
        gradient_rollout(probs, probs, positive="before")
    with pytest.raises(ValueError, match=r"probs must end in a square \(N, N\) map"):
        attention_rollout(probs[..., :3])
    with pytest.raises(TypeError, match="probs must be a tensor .* or a non-empty sequence"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"relevance has 4 tokens but num_prefix_tokens \+ prod\(grid\) = 1 \+ 4"):
        token_map(attention_rollout(probs), (2, 2), num_prefix_tokens=1)
    with pytest.raises(ValueError, match="query 4 out of range for 4 tokens"):
        token_map(attention_rollout(probs), (2, 2), query=4)
