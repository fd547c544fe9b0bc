"""ops.hedgehog: exponential-feature linear attention against the naive equation, the dense oracle, the float32
causal defect (a later key in the chunk shifted a row to zeros), gradients, state size, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.hedgehog import hedgehog_attention, hedgehog_dense_weights, hedgehog_state_bytes, hedgehog_weights
from visattn.ops.linear_attention import ROW_BLOCK

FP64 = {"atol": 1e-10, "rtol": 1e-10}
FP32 = {"atol": 1e-4, "rtol": 1e-4}

pytestmark = pytest.mark.usefixtures("one_thread")


def log_features(x):
    """Hedgehog's log-features at identity initialisation, [x, -x]."""
    return torch.cat([x, -x], dim=-1)


def inputs(b, h, n, d, dv=None, dtype=torch.float64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=gen, dtype=dtype) * scale for _ in range(2))
    return log_features(q), log_features(k), torch.randn(b, h, n, dv or d, generator=gen, dtype=dtype)


def naive(lq, lk, v, is_causal=False):
    """y_i = sum_j (exp(lq_i) . exp(lk_j)) v_j / sum_j exp(lq_i) . exp(lk_j), unshifted, token by token."""
    fq, fk = lq.exp(), lk.exp()
    out = torch.zeros_like(v)
    n = lq.shape[2]
    for i in range(n):
        last = i + 1 if is_causal else n
        sims = (fq[:, :, i : i + 1] * fk[:, :, :last]).sum(-1)
        out[:, :, i] = (sims.unsqueeze(-1) * v[:, :, :last]).sum(2) / sims.sum(-1, keepdim=True)
    return out


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 31), d=st.integers(1, 5), dv=st.integers(1, 4),
       is_causal=st.booleans(), chunk_size=st.integers(1, 9), seed=st.integers(0, 1000))
def test_equals_the_naive_equation_and_the_dense_oracle(b, h, n, d, dv, is_causal, chunk_size, seed):
    lq, lk, v = inputs(b, h, n, d, dv, seed=seed)
    expected = naive(lq, lk, v, is_causal)
    torch.testing.assert_close(hedgehog_attention(lq, lk, v, is_causal=is_causal, chunk_size=chunk_size), expected,
                               **FP64)
    torch.testing.assert_close(hedgehog_weights(lq, lk, is_causal=is_causal) @ v, expected, **FP64)


def test_float32_causal_row_is_not_shifted_by_a_later_key_of_its_chunk():
    """Issue 13's repro: eight keys, key 7 = 110 in one coordinate. Row 0 sees only key 0, so it must be v_0; a
    chunk-level shift (taken over all eight keys) underflowed every term of row 0 and returned [0, 0, 0]."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 8, 3, generator=gen) for _ in range(3))
    k[0, 0, 7, 0] = 110.0
    out = hedgehog_attention(log_features(q), log_features(k), v, is_causal=True)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0], atol=1e-6, rtol=1e-6)
    expected = naive(log_features(q.double()), log_features(k.double()), v.double(), is_causal=True)
    torch.testing.assert_close(out.double(), expected, **FP32)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_float32_causal_on_scale_30_logits_matches_the_float64_oracle_on_every_row(chunk_size, seed):
    lq, lk, v = inputs(1, 2, 96, 8, seed=seed, scale=30.0)
    expected = hedgehog_weights(lq, lk, is_causal=True) @ v
    out = hedgehog_attention(lq.float(), lk.float(), v.float(), is_causal=True, chunk_size=chunk_size)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, **FP32)


@pytest.mark.parametrize("is_causal", [False, True])
def test_float32_any_magnitude_stays_finite_and_accurate(is_causal):
    lq, lk, v = inputs(2, 2, 31, 4, scale=60.0)
    out = hedgehog_attention(lq.float(), lk.float(), v.float(), is_causal=is_causal, chunk_size=8)
    torch.testing.assert_close(out.double(), hedgehog_weights(lq, lk, is_causal=is_causal) @ v, **FP32)


def test_more_tokens_than_one_row_block():
    lq, lk, v = inputs(1, 1, ROW_BLOCK + 3, 2)
    torch.testing.assert_close(hedgehog_attention(lq, lk, v), hedgehog_weights(lq, lk) @ v, **FP64)


def test_causal_output_never_sees_a_later_token():
    lq, lk, v = inputs(1, 2, 21, 3)
    out = hedgehog_attention(lq, lk, v, is_causal=True, chunk_size=4)
    for t in (0, 9, 19):
        later = [x.clone() for x in (lq, lk, v)]
        for x in later:
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 50
        torch.testing.assert_close(hedgehog_attention(*later, is_causal=True, chunk_size=4)[:, :, : t + 1],
                                   out[:, :, : t + 1], **FP64)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck(is_causal):
    lq, lk, v = (x.requires_grad_() for x in inputs(1, 2, 7, 2, seed=3))
    assert torch.autograd.gradcheck(lambda a, b, c: hedgehog_attention(a, b, c, is_causal=is_causal, chunk_size=3),
                                    (lq, lk, v))


def test_meta_device_shapes():
    lq, lk, v = (torch.empty(2, 3, 10, e, device="meta") for e in (6, 6, 5))
    for is_causal in (False, True):
        assert hedgehog_attention(lq, lk, v, is_causal=is_causal, chunk_size=4).shape == (2, 3, 10, 5)


def test_state_bytes_formula():
    """F (Dv + 1) for sum_j exp(lk_j - c) [v_j, 1] plus F for the shift c, per head."""
    assert hedgehog_state_bytes(2, 3, 8, 5) == 2 * 3 * (8 * 6 + 8) * 4
    assert hedgehog_state_bytes(1, 1, 128, 64, torch.bfloat16) == (128 * 65 + 128) * 2


def test_bad_input_errors_name_the_argument():
    lq, lk, v = inputs(1, 2, 4, 3)
    with pytest.raises(ValueError, match="log_q and log_k must share"):
        hedgehog_attention(lq, lk[..., :4], v)
    with pytest.raises(ValueError, match="v must be shaped"):
        hedgehog_attention(lq, lk, v[:, :, :3])
    with pytest.raises(ValueError, match="log_q must be a"):
        hedgehog_attention(lq[0], lk, v)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        hedgehog_attention(lq, lk, v, is_causal=True, chunk_size=0)


@pytest.mark.parametrize("is_causal", [False, True])
def test_feature_maps_applied_by_blocks_equal_precomputed_log_features(is_causal):
    """q_features / k_features map blocks of the inputs (Hedgehog passes q, k and its maps): same result as
    mapping everything first, across row blocks and ragged chunks."""
    gen = torch.Generator().manual_seed(7)
    n = ROW_BLOCK + 5 if not is_causal else 23
    q, k = (torch.randn(1, 2, n, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 2, n, 2, generator=gen, dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    got = hedgehog_attention(q, k, v, is_causal=is_causal, chunk_size=5,
                             q_features=lambda x: log_features(x * scale), k_features=log_features)
    expected = hedgehog_attention(log_features(q * scale), log_features(k), v, is_causal=is_causal, chunk_size=5)
    torch.testing.assert_close(got, expected, **FP64)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 9), f=st.integers(1, 6), scale=st.sampled_from([0.5, 5.0, 40.0]), seed=st.integers(0, 999))
def test_dense_weights_by_one_product_equal_the_oracle(n, f, scale, seed):
    """float64 equal to the log-sum-exp oracle for any magnitude; float32 finite and close even at |l| ~ 40 * 3
    (a naive exp would overflow); gradients by finite differences; causal returns the oracle."""
    g = torch.Generator().manual_seed(seed)
    lq, lk = (torch.randn(2, 2, n, f, generator=g, dtype=torch.float64) * scale for _ in range(2))
    torch.testing.assert_close(hedgehog_dense_weights(lq, lk), hedgehog_weights(lq, lk), rtol=1e-10, atol=1e-12)
    low = hedgehog_dense_weights(lq.float(), lk.float())
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.double(), hedgehog_weights(lq, lk), rtol=0, atol=1e-4)
    assert torch.equal(hedgehog_dense_weights(lq, lk, is_causal=True), hedgehog_weights(lq, lk, is_causal=True))
    small = (lq[:1, :1, :4, :3].clone().requires_grad_(), lk[:1, :1, :4, :3].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: hedgehog_dense_weights(a / scale, b / scale), small)
