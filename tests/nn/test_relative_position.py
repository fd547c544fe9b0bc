"""RelativePositionBias (MaxViT) and FactorizedRelativeLogits (HaloNet): timm parity, per-pair definition, grads."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers.halo_attn import PosEmbedRel
from timm.layers.pos_embed_rel import RelPosBiasTf

from visattn.nn import FactorizedRelativeLogits, RelativePositionBias


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (4, 4), (3, 5), (7, 7)])
def test_bias_equals_timm_relposbiastf(size):
    torch.manual_seed(0)
    ours = RelativePositionBias(size, num_heads=3)
    theirs = RelPosBiasTf(size, num_heads=3)
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(), theirs.get_bias(), rtol=0, atol=0)


def test_bias_state_dict_is_the_table_alone():
    bias = RelativePositionBias((2, 5), num_heads=4)
    assert list(bias.state_dict()) == ["relative_position_bias_table"]
    assert bias.relative_position_bias_table.shape == (4, 3, 9)


@settings(max_examples=30, deadline=None)
@given(ph=st.integers(1, 5), pw=st.integers(1, 5), heads=st.integers(1, 3))
def test_bias_per_pair_definition(ph, pw, heads):
    bias = RelativePositionBias((ph, pw), heads).double()
    table = bias.relative_position_bias_table
    got = bias()
    assert got.shape == (heads, ph * pw, ph * pw)
    for qi in range(ph * pw):
        i, j = divmod(qi, pw)
        for ki in range(ph * pw):
            x, y = divmod(ki, pw)
            assert torch.equal(got[:, qi, ki], table[:, x - i + ph - 1, y - j + pw - 1])


def test_bias_between_arbitrary_coordinates():
    bias = RelativePositionBias(4, num_heads=2)
    qc = torch.tensor([[0, 3], [2, 1]])
    kc = torch.tensor([[3, 0], [1, 1], [0, 0]])
    got = bias.bias_between(qc, kc)
    table = bias.relative_position_bias_table
    assert got.shape == (2, 2, 3)
    assert torch.equal(got[:, 0, 0], table[:, 3 - 0 + 3, 0 - 3 + 3])
    assert torch.equal(got[:, 1, 1], table[:, 1 - 2 + 3, 1 - 1 + 3])


def test_bias_gradcheck():
    bias = RelativePositionBias((2, 3), num_heads=2).double()
    table = bias.relative_position_bias_table.detach().clone().requires_grad_(True)

    def fn(t):
        return torch.func.functional_call(bias, {"relative_position_bias_table": t}, ())

    assert torch.autograd.gradcheck(fn, (table,))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(partition_size=0, num_heads=2), ValueError, "partition_size"),
        (dict(partition_size=(3, 3, 3), num_heads=2), ValueError, "partition_size"),
        (dict(partition_size=3, num_heads=0), ValueError, "num_heads"),
        (dict(partition_size=3, num_heads=1.5), TypeError, "num_heads"),
    ],
)
def test_bias_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RelativePositionBias(**kwargs)


def _rel_logits_per_pair(q: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor, b: int,
                         w: int) -> torch.Tensor:
    """``q . R_h[x - i + w - 1] + q . R_w[y - j + w - 1]`` pair by pair."""
    out = q.new_zeros(*q.shape[:-2], b * b, w * w)
    for qi in range(b * b):
        i, j = divmod(qi, b)
        for ki in range(w * w):
            x, y = divmod(ki, w)
            out[..., qi, ki] = (q[..., qi, :] * (height_rel[x - i + w - 1] + width_rel[y - j + w - 1])).sum(-1)
    return out


@pytest.mark.parametrize(("block", "window", "dim_head"), [(1, 1, 2), (2, 4, 3), (4, 6, 8), (3, 7, 5), (2, 2, 4)])
def test_factorized_logits_equal_timm_posembedrel(block, window, dim_head):
    torch.manual_seed(1)
    ours = FactorizedRelativeLogits(block, window, dim_head, scale=0.5)
    theirs = PosEmbedRel(block, window, dim_head, scale=0.5)
    theirs.load_state_dict(ours.state_dict())
    q = torch.randn(6, 5, block * block, dim_head)
    torch.testing.assert_close(ours(q), theirs(q), rtol=1e-6, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(block=st.integers(1, 4), halo=st.integers(0, 2), dim_head=st.integers(1, 4))
def test_factorized_logits_per_pair_definition(block, halo, dim_head):
    window = block + 2 * halo
    logits = FactorizedRelativeLogits(block, window, dim_head).double()
    q = torch.randn(2, 3, block * block, dim_head, dtype=torch.float64)
    expected = _rel_logits_per_pair(q, logits.height_rel.detach(), logits.width_rel.detach(), block, window)
    torch.testing.assert_close(logits(q).detach(), expected, rtol=1e-12, atol=1e-12)


def test_factorized_logits_gradcheck():
    logits = FactorizedRelativeLogits(2, 4, 3).double()
    q = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    h = logits.height_rel.detach().clone().requires_grad_(True)
    w = logits.width_rel.detach().clone().requires_grad_(True)

    def fn(q, h, w):
        return torch.func.functional_call(logits, {"height_rel": h, "width_rel": w}, (q,))

    assert torch.autograd.gradcheck(fn, (q, h, w))


def test_factorized_logits_bfloat16():
    torch.manual_seed(2)
    logits = FactorizedRelativeLogits(4, 8, 16)
    q = torch.randn(2, 16, 16)
    expected = logits(q)
    got = logits.bfloat16()(q.bfloat16())
    assert got.dtype == torch.bfloat16
    # bfloat16 keeps 8 mantissa bits: measured error about 0.5% of the logits' scale; allowed 2%.
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=2e-2 * expected.abs().max().item())


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((4, 3, 8), ValueError, "window_size"),
        ((0, 3, 8), ValueError, "block_size"),
        ((2, 4, 0), ValueError, "dim_head"),
        ((2, 4.0, 8), TypeError, "window_size"),
    ],
)
def test_factorized_logits_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        FactorizedRelativeLogits(*args)


def test_factorized_logits_bad_query_shape():
    logits = FactorizedRelativeLogits(2, 4, 8)
    with pytest.raises(ValueError, match="block_size"):
        logits(torch.randn(1, 9, 8))
