"""Hebbian associative memory view of linear attention: storage, retrieval, crosstalk growing with stored pairs."""

from __future__ import annotations

import pytest
import torch

from visattn.ops.associative_memory import (
    hebbian_memory,
    random_associations,
    retrieval_accuracy,
    retrieve,
)

FP64 = {"atol": 1e-10, "rtol": 1e-10}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_memory_is_the_sum_of_outer_products_and_retrieval_is_unnormalised_linear_attention():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 7, 5, generator=gen, dtype=torch.float64)
    values = torch.randn(2, 7, 3, generator=gen, dtype=torch.float64)
    queries = torch.randn(2, 4, 5, generator=gen, dtype=torch.float64)
    memory = hebbian_memory(keys, values)
    expected = sum(torch.einsum("bi,bj->bij", values[:, j], keys[:, j]) for j in range(7))
    torch.testing.assert_close(memory, expected, **FP64)
    linear_attention = (queries @ keys.transpose(-2, -1)) @ values
    torch.testing.assert_close(retrieve(memory, queries), linear_attention, **FP64)


def test_a_single_stored_pair_is_recalled_exactly():
    result = retrieval_accuracy(1, d_k=16, d_v=8, trials=20)
    assert result.mean_squared_error < 1e-25 and result.accuracy == 1.0
    assert result.cosine == pytest.approx(1.0)


def test_retrieval_error_grows_with_stored_pairs_as_crosstalk_predicts():
    # the error estimate averages over about trials * N^2 / 2 key pairs: keep that large for every N
    results = [retrieval_accuracy(n, d_k=32, d_v=32, trials=4000 // n, seed=1) for n in (2, 8, 32, 128)]
    errors = [r.mean_squared_error for r in results]
    assert errors == sorted(errors) and errors[-1] > 20 * errors[0]
    for r in results:
        assert r.predicted_error == (r.num_pairs - 1) / 32
        assert r.mean_squared_error == pytest.approx(r.predicted_error, rel=0.15)
    accuracies = [r.accuracy for r in results]
    assert accuracies[0] > 0.99 and accuracies[-1] < accuracies[0]
    cosines = [r.cosine for r in results]
    assert cosines == sorted(cosines, reverse=True)


def test_retrieval_error_falls_with_key_dimension():
    errors = [retrieval_accuracy(32, d_k=d_k, d_v=16, trials=100).mean_squared_error for d_k in (8, 32, 128)]
    assert errors == sorted(errors, reverse=True)
    assert errors[0] == pytest.approx(31 / 8, rel=0.15) and errors[-1] == pytest.approx(31 / 128, rel=0.15)


def test_random_associations_have_unit_keys_and_are_seeded():
    keys, values = random_associations(3, 5, 7, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.linalg.vector_norm(keys, dim=-1), torch.ones(3, 5, dtype=torch.float64))
    assert values.shape == (3, 5, 2)
    assert retrieval_accuracy(4, 8, trials=3, seed=2) == retrieval_accuracy(4, 8, trials=3, seed=2)


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_pairs must be a positive int, got 0"):
        retrieval_accuracy(0, 8)
    with pytest.raises(ValueError, match="d_k must be a positive int"):
        retrieval_accuracy(3, -1)
    with pytest.raises(ValueError, match=r"keys \(\.\.\., N, d_k\) and values \(\.\.\., N, d_v\) must agree"):
        hebbian_memory(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(TypeError, match="keys and values must be torch.Tensor"):
        hebbian_memory([1.0], torch.randn(1, 1))
    with pytest.raises(ValueError, match="must share d_k"):
        retrieve(torch.randn(3, 4), torch.randn(2, 5))
