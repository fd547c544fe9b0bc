"""DependencyViT reversed attention (arXiv 2304.03282): the formula written per pair, the cumulative message,
dependency trees, Lite pruning counts, gradients and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.nn import (
    Attention,
    ReversedAttention,
    ReversedBlock,
    ReversedEncoder,
    ReversedMixer,
    dependency_tree,
    lite_keep_counts,
    prune_tokens,
)

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


def naive_reversed(q, k, v, x, mixer: ReversedMixer, m_prev=None):
    """Per pair: A_F[j, i] = softmax_i(q_j . k_i / sqrt d); p_h,j = softmax_h(W_p x_j / 0.1);
    m_j = m_prev_j sigmoid(w2 . gelu(W1 x_j)); A_R[i, j] = A_F[j, i] p_h,j m_j. Returns (out, A_R, m)."""
    b, h, n, d = q.shape
    w_p = mixer.head_selector.weight.detach()
    w1, w2 = mixer.message_controller.fc1.weight.detach(), mixer.message_controller.fc2.weight.detach()
    weights = torch.zeros(b, h, n, n, dtype=q.dtype)
    m = torch.zeros(b, n, dtype=q.dtype)
    for bi in range(b):
        for j in range(n):
            gate = 1.0 / (1.0 + math.exp(-float(w2[0] @ F.gelu(w1 @ x[bi, j]))))
            m[bi, j] = gate * (1.0 if m_prev is None else float(m_prev[bi, j]))
        for j in range(n):
            p = torch.softmax(w_p @ x[bi, j] / 0.1, dim=0)
            for hi in range(h):
                logits = torch.stack([q[bi, hi, j] @ k[bi, hi, i] for i in range(n)]) / math.sqrt(d)
                a_f = torch.softmax(logits, dim=0)
                for i in range(n):
                    weights[bi, hi, i, j] = a_f[i] * p[hi] * m[bi, j]
    return weights @ v, weights, m


def inputs(b=2, h=3, n=7, d=4, dim=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mixer = randomize(ReversedMixer(dim, h).double(), seed)
    q, k, v = torch.randn(3, b, h, n, d, generator=gen, dtype=torch.float64).unbind(0)
    x = torch.randn(b, n, dim, generator=gen, dtype=torch.float64)
    return mixer, q, k, v, x


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 5).map(lambda x: 2 * x + 1), h=st.integers(1, 3), with_prev=st.booleans(),
       seed=st.integers(0, 1000))
def test_mixer_equals_paper_formula(n, h, with_prev, seed):
    mixer, q, k, v, x = inputs(2, h, n, seed=seed)
    m_prev = torch.rand(2, n, dtype=torch.float64) if with_prev else None
    out, weights, m = naive_reversed(q, k, v, x, mixer, m_prev)
    got, got_m = mixer.forward_with_message(q, k, v, n, x, m_prev)
    torch.testing.assert_close(got, out, **FP64)
    torch.testing.assert_close(got_m, m, **FP64)
    torch.testing.assert_close(mixer(q, k, v, n, x=x, message=m_prev), out, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n, x=x, message=m_prev), weights, **FP64)


def test_reversed_attention_module_matches_pr_formula_and_carries_message():
    torch.manual_seed(0)
    layer = randomize(ReversedAttention(16, num_heads=4, qkv_bias=True).double(), 1)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    q, k, v = layer.qkv(x).reshape(2, 9, 3, 4, 4).permute(2, 0, 3, 1, 4)
    out, _, m = naive_reversed(q, k, v, x, layer.mixer)
    expected = layer.proj(out.transpose(1, 2).reshape(2, 9, 16))
    got, got_m = layer(x)
    torch.testing.assert_close(got, expected, **FP64)
    torch.testing.assert_close(got_m, m, **FP64)
    _, m2 = layer(x, message=got_m)
    torch.testing.assert_close(m2, m * m, **FP64)


def test_blocks_make_the_message_cumulative():
    torch.manual_seed(1)
    blocks = [ReversedBlock(16, 4).double() for _ in range(3)]
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    m, gates = None, []
    for block in blocks:
        gates.append(block.attn.mixer.message(block.norm1(x)))
        x, m = block(x, m)
    torch.testing.assert_close(m, gates[0] * gates[1] * gates[2], **FP64)


def test_dependency_tree_gives_every_token_exactly_one_parent():
    mixer, q, k, v, x = inputs(2, 3, 11, seed=4)
    weights = mixer.attention_weights(q, k, 11, x=x)
    parents = dependency_tree(weights)
    assert parents.shape == (2, 11) and parents.dtype == torch.long
    assert ((parents >= 0) & (parents < 11)).all()
    summed = weights.sum(1)
    for bi in range(2):
        for j in range(11):
            column = [float(summed[bi, i, j]) for i in range(11)]
            assert int(parents[bi, j]) == column.index(max(column))
    children = torch.zeros(2, 11, dtype=torch.long).scatter_add_(1, parents, torch.ones_like(parents))
    assert (children.sum(-1) == 11).all()
    no_self = dependency_tree(weights, exclude_self=True)
    assert (no_self != torch.arange(11)).all()
    torch.testing.assert_close(dependency_tree(summed), parents)


def test_lite_keep_counts_follow_the_documented_floor_schedule():
    assert lite_keep_counts(196) == [164, 132, 100, 69]
    left, expected = 50, []
    for k in range(1, 4):
        left = math.floor(left * (1 - k * 0.2) / (1 - (k - 1) * 0.2))
        expected.append(left)
    assert lite_keep_counts(50, 3, 0.2) == expected
    assert lite_keep_counts(196, 0) == []


def test_prune_tokens_keeps_prefix_and_top_messages_in_order():
    x = torch.arange(2 * 8 * 3, dtype=torch.float64).reshape(2, 8, 3)
    m = torch.tensor([[9.0, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4], [0.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.6, 0.7]])
    kept_x, kept_m, index = prune_tokens(x, m, keep=3, num_prefix_tokens=1)
    assert index.tolist() == [[0, 2, 4, 6], [0, 1, 6, 7]]
    torch.testing.assert_close(kept_x, x.gather(1, index.unsqueeze(-1).expand(-1, -1, 3)))
    torch.testing.assert_close(kept_m, m.gather(1, index))


def test_lite_encoder_prunes_to_the_counts_and_tracks_positions():
    torch.manual_seed(2)
    encoder = ReversedEncoder(16, depth=6, num_heads=4, prune_layers=(2, 5), prune_ratio=0.16,
                              num_prefix_tokens=1).eval()
    x = torch.randn(2, 1 + 49, 16)
    out, m, index = encoder(x)
    counts = lite_keep_counts(49, 2, 0.16)
    assert out.shape == (2, 1 + counts[-1], 16) and m.shape == (2, 1 + counts[-1])
    assert (index[:, 0] == 0).all() and (index[:, 1:].diff(dim=-1) > 0).all()
    trace, mm = x, None
    for layer, block in enumerate(encoder.blocks, start=1):
        trace, mm = block(trace, mm)
        if layer == 2:
            full = mm
            trace, mm, kept = prune_tokens(trace, mm, counts[0], 1)
            dropped = torch.ones_like(full, dtype=torch.bool).scatter(1, kept, False)
            assert (mm[:, 1:].min(-1).values >= full.masked_fill(~dropped, -1.0).max(-1).values).all()
        if layer == 5:
            trace, mm, _ = prune_tokens(trace, mm, counts[1], 1)
    torch.testing.assert_close(out, trace)


def test_attention_module_with_registry_mixer():
    torch.manual_seed(3)
    layer = Attention(24, num_heads=4, mixer="reversed", num_prefix_tokens=1)
    assert isinstance(layer.mixer, ReversedMixer) and layer.mixer.head_selector.weight.shape == (4, 24)
    x = torch.randn(2, 1 + 16, 24, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all() and layer.mixer.message_controller.fc1.weight.grad is not None
    assert visattn.get_mixer_spec("reversed").paper.arxiv == "2304.03282"


def test_bad_input():
    mixer, q, k, v, x = inputs()
    with pytest.raises(ValueError, match="x .*is required"):
        mixer(q, k, v, 7)
    with pytest.raises(ValueError, match="attn_mask is not supported"):
        mixer(q, k, v, 7, attn_mask=torch.ones(7, 7, dtype=torch.bool), x=x)
    with pytest.raises(ValueError, match=r"message must be shaped \(B, N\)"):
        mixer(q, k, v, 7, x=x, message=torch.ones(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="ratio must be > 0 with num_prunes \\* ratio < 1"):
        lite_keep_counts(196, 4, 0.3)
    with pytest.raises(ValueError, match="prune_layers must be 1-based layer indices"):
        ReversedEncoder(16, depth=4, num_heads=4, prune_layers=(0, 5))
    with pytest.raises(ValueError, match="keep must be an int in"):
        prune_tokens(x, torch.ones(2, 7, dtype=torch.float64), keep=8)
    with pytest.raises(ValueError, match="weights must be"):
        dependency_tree(torch.ones(3, 4))
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        ReversedMixer(8, 2, temperature=0)
