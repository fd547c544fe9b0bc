"""ops.linear_attention: paper equation (naive loops) and dense oracle, causal chunked scan, O(N) memory, blocks,
gradients, state size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import PHI, naive_linear, seeded_qkv
from visattn.bench.memory import peak_memory_bytes
from visattn.ops.linear_attention import (
    FEATURE_MAPS,
    ROW_BLOCK,
    block_bounds,
    kernel_attention,
    kernel_weights,
    key_sums,
    linear_attention,
    linear_state_bytes,
    row_blocks,
)

FP64 = {"atol": 1e-10, "rtol": 1e-10}
FP32 = {"atol": 1e-5, "rtol": 1e-4}


pytestmark = pytest.mark.usefixtures("one_thread")


qkv = seeded_qkv


def linear(feature_map="elu+1", is_causal=False, chunk_size=64):
    """``linear_attention`` with a named feature map, called as ``(q, k, v, shape)``."""
    return lambda q, k, v, shape: linear_attention(q, k, v, FEATURE_MAPS[feature_map], is_causal=is_causal,
                                                   chunk_size=chunk_size)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(1, 3), n=st.integers(1, 41), d=st.integers(1, 8), dv=st.integers(1, 6),
       feature_map=st.sampled_from(["elu+1", "relu"]), is_causal=st.booleans(), chunk_size=st.integers(1, 9),
       seed=st.integers(0, 1000))
def test_linear_attention_equals_the_paper_equation_and_the_dense_oracle(b, h, n, d, dv, feature_map, is_causal,
                                                                        chunk_size, seed):
    q, k, v = qkv(b, h, n, d, seed=seed, dv=dv)
    phi = FEATURE_MAPS[feature_map]
    expected = naive_linear(q, k, v, feature_map, is_causal)
    torch.testing.assert_close(linear_attention(q, k, v, phi, is_causal=is_causal, chunk_size=chunk_size), expected,
                               **FP64)
    torch.testing.assert_close(kernel_weights(phi(q), phi(k), is_causal=is_causal) @ v, expected, **FP64)


@pytest.mark.parametrize("feature_map", ["elu+1", "relu"])
def test_causal_output_never_sees_a_later_token(feature_map):
    q, k, v = qkv(2, 2, 23, 5)
    mixer = linear(feature_map, is_causal=True, chunk_size=4)
    out = mixer(q, k, v, 23)
    for t in (0, 6, 11, 21):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 3
        torch.testing.assert_close(mixer(q2, k2, v2, 23)[:, :, : t + 1], out[:, :, : t + 1], **FP64)


def test_chunk_size_does_not_change_the_result():
    q, k, v = qkv(2, 3, 37, 6)
    outs = [linear(is_causal=True, chunk_size=c)(q, k, v, 37) for c in (1, 5, 16, 37, 64)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], **FP64)


def test_relu_rows_with_zero_denominator_give_zero_not_nan():
    q, k, v = qkv(1, 1, 7, 3)
    q[:, :, 2] = -1.0
    out = linear("relu")(q, k, v, 7)
    assert torch.isfinite(out).all() and (out[:, :, 2] == 0).all()


@pytest.mark.parametrize("is_causal", [False, True])
def test_float32_matches_float64(is_causal):
    q, k, v = qkv(2, 2, 65, 8)
    mixer = linear(is_causal=is_causal, chunk_size=16)
    torch.testing.assert_close(mixer(q.float(), k.float(), v.float(), 65), mixer(q, k, v, 65).float(), **FP32)


def test_bfloat16_within_stated_tolerance():
    q, k, v = qkv(2, 2, 33, 8)
    mixer = linear(is_causal=True, chunk_size=8)
    out = mixer(q.bfloat16(), k.bfloat16(), v.bfloat16(), 33).double()
    torch.testing.assert_close(out, mixer(q, k, v, 33), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("feature_map", ["elu+1", "relu"])
def test_gradcheck(feature_map, is_causal):
    q, k, v = (x.requires_grad_() for x in qkv(2, 1, 7, 3, seed=3))
    mixer = linear(feature_map, is_causal=is_causal, chunk_size=3)
    assert torch.autograd.gradcheck(lambda q, k, v: mixer(q, k, v, 7), (q, k, v))


@pytest.mark.parametrize("is_causal", [False, True])
def test_memory_grows_linearly_no_n_by_n_matrix(is_causal):
    n, d = 4096, 16
    q, k, v = (x.float() for x in qkv(1, 2, n, d))
    mixer = linear(is_causal=is_causal, chunk_size=64)
    peak = peak_memory_bytes(lambda: mixer(q, k, v, n))
    if peak is None:
        pytest.skip("the profiler recorded no memory events")
    assert peak < 2 * n * n * 4 / 16, f"peak {peak} bytes is not far below one 2 x N x N float32 score matrix"


@pytest.mark.parametrize("block_size", [1, 4, 7, 64])
def test_key_and_row_blocks_equal_whole_tensor_passes(block_size):
    q, k, v = qkv(2, 2, 23, 5)
    phi = PHI["elu+1"]
    kv, z = key_sums(k, v, phi, block_size)
    torch.testing.assert_close(kv, phi(k).transpose(-2, -1) @ v, **FP64)
    torch.testing.assert_close(z, phi(k).sum(2), **FP64)
    torch.testing.assert_close(row_blocks(lambda x: 2 * x, q, block_size), 2 * q, **FP64)


@given(st.integers(0, 5000), st.integers(1, 700))
@settings(max_examples=60, deadline=None)
def test_block_bounds_are_the_fewest_equal_blocks_covering_every_token(length, block_size):
    bounds = block_bounds(length, block_size)
    sizes = [stop - start for start, stop in bounds]
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert max(sizes) <= block_size and max(sizes) - min(sizes) <= 1
    assert len(bounds) == max(1, -(-length // block_size))


def test_a_few_tokens_over_a_block_split_evenly_not_into_a_full_block_and_a_tail():
    assert block_bounds(ROW_BLOCK + 2) == [(0, ROW_BLOCK // 2 + 1), (ROW_BLOCK // 2 + 1, ROW_BLOCK + 2)]


def test_more_tokens_than_one_row_block():
    n = 2 * ROW_BLOCK + 3
    q, k, v = qkv(1, 2, n, 3)
    fq, fk = PHI["elu+1"](q), PHI["elu+1"](k)
    expected = (fq @ (fk.transpose(-2, -1) @ v)) / (fq @ fk.sum(2).unsqueeze(-1) + 1e-6)
    torch.testing.assert_close(linear()(q, k, v, n), expected, **FP64)


def test_kernel_attention_never_materialises_nxn_in_the_non_causal_form():
    q, k, v = qkv(1, 1, 9, 4)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    torch.testing.assert_close(kernel_attention(fq, fk, v), naive_linear(q, k, v), **FP64)


def test_state_bytes_is_the_kv_and_normaliser_state():
    """F (Dv + 1) elements per head: sum_j phi(k_j) v_j^T and sum_j phi(k_j), as key_sums builds them."""
    q, k, v = qkv(2, 3, 11, 5, dtype=torch.float32, dv=4)
    kv, z = key_sums(k, v, FEATURE_MAPS["elu+1"])
    assert linear_state_bytes(2, 3, 5, 4) == kv.nbytes + z.nbytes == 2 * 3 * 5 * (4 + 1) * 4
    assert linear_state_bytes(1, 8, 64, 64, torch.bfloat16) == 8 * 64 * 65 * 2


def test_elu_plus_one_feature_map_equals_elu_and_its_gradient():
    from visattn.ops.linear_attention import FEATURE_MAPS

    phi = FEATURE_MAPS["elu+1"]
    x = torch.cat([torch.randn(200, dtype=torch.float64) * 5, torch.zeros(3, dtype=torch.float64)]).requires_grad_()
    torch.testing.assert_close(phi(x), torch.nn.functional.elu(x) + 1, rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(phi(x).sum(), x)
    expected = torch.where(x > 0, torch.ones_like(x), torch.exp(x)).detach()
    expected[-3:] = 1.0  # elu with alpha 1 has slope 1 on both sides of 0
    torch.testing.assert_close(grad, expected)
    assert torch.isfinite(phi(torch.tensor([1e4, -1e4]))).all()
