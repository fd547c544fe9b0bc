"""Hierarchical Self-Attention (arXiv 2509.15448): the DP against a brute-force constrained KL minimisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

import visattn
from visattn.nn.hierarchical import HierarchicalMixer
from visattn.ops.hierarchical import grid_tree, hierarchical_attention, hierarchical_weights, token_tree

TREES = {
    "two_levels": ([5, 5, 6, 6, 6, 7, 7, -1], 5),
    "three_levels": ([6, 6, 7, 7, 7, 8, 9, 8, 9, -1], 6),
    "chain_and_single_child": ([4, 4, 5, 6, 5, 6, -1], 4),
}


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def block_ids(parents: list[int], n: int) -> np.ndarray:
    """Block of every (i, j): i == j its own block, else (child of lca containing i, child containing j)."""
    def path(u: int) -> list[int]:
        out = [u]
        while parents[out[-1]] != -1:
            out.append(parents[out[-1]])
        return out

    ids, blocks = np.zeros((n, n), dtype=int), {}
    for i in range(n):
        for j in range(n):
            if i == j:
                key = ("self", i)
            else:
                pi, pj = path(i)[::-1], path(j)[::-1]
                depth = next(d for d in range(len(pi)) if pi[d] != pj[d])
                key = (pi[depth], pj[depth])
            ids[i, j] = blocks.setdefault(key, len(blocks))
    return ids


def brute_force(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """argmin_A sum_i KL(A_i || softmax(s_i)) over block-constant row-stochastic A, by SLSQP on log-weights."""
    n, nblocks = scores.shape[0], ids.max() + 1
    log_p = scores - np.log(np.exp(scores).sum(-1, keepdims=True))

    def objective(theta):
        a = np.exp(theta[ids])
        return float((a * (theta[ids] - log_p)).sum())

    constraints = [{"type": "eq", "fun": (lambda theta, i=i: np.exp(theta[ids[i]]).sum() - 1.0)} for i in range(n)]
    res = minimize(objective, np.full(nblocks, -math.log(n)), constraints=constraints, method="SLSQP",
                   options={"ftol": 1e-14, "maxiter": 1000})
    assert res.success, res.message
    return np.exp(res.x[ids])


@pytest.mark.parametrize("name", sorted(TREES))
def test_dp_equals_brute_force_construction(name: str) -> None:
    parents, n = TREES[name]
    tree = token_tree(parents, n)
    q, k, v = (rand(2, 2, n, 3, seed=i) for i in range(3))
    weights = hierarchical_weights(q, k, tree)
    ids = block_ids(parents, n)
    for b in range(2):
        for h in range(2):
            scores = (q[b, h] @ k[b, h].T / math.sqrt(3)).numpy()
            expected = brute_force(scores, ids)
            np.testing.assert_allclose(weights[b, h].numpy(), expected, atol=2e-5)
    torch.testing.assert_close(hierarchical_attention(q, k, v, tree), weights @ v)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, n, dtype=torch.float64))


def test_flat_tree_equals_softmax_attention() -> None:
    n = 7
    tree = token_tree([n] * n + [-1], n)
    q, k, v = (rand(3, 2, n, 5, seed=i) for i in range(3))
    torch.testing.assert_close(hierarchical_attention(q, k, v, tree), F.scaled_dot_product_attention(q, k, v))


def test_gradients_through_the_dynamic_programme() -> None:
    tree = token_tree(TREES["three_levels"][0], 6)
    inputs = [rand(1, 2, 6, 3, seed=i).requires_grad_() for i in range(3)]
    assert torch.autograd.gradcheck(lambda a, b, c: hierarchical_attention(a, b, c, tree), inputs)


def test_grid_tree_mixer_runs_and_matches_its_weights() -> None:
    tree = grid_tree((3, 4), group=2, num_prefix_tokens=1)
    assert sorted(tree.leaves[tree.root]) == list(range(13))
    layer = visattn.Attention(16, 2, mixer="hierarchical", num_prefix_tokens=1, shape=(3, 4))
    assert isinstance(layer.mixer, HierarchicalMixer)
    x = torch.randn(2, 13, 16)
    assert layer(x).shape == (2, 13, 16)
    q, k, v = (rand(2, 2, 13, 4, seed=i) for i in range(3))
    mixer = HierarchicalMixer()
    torch.testing.assert_close(mixer(q, k, v, (3, 4)), mixer.attention_weights(q, k, (3, 4)) @ v)


def test_bad_trees_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="does not cover the tokens"):
        token_tree([4, 4, 4, 5, -1, 4], 3)  # node 3 is internal without children
    with pytest.raises(ValueError, match="exactly one root"):
        token_tree([3, 3, -1, -1], 2)
    with pytest.raises(ValueError, match="tokens must be leaves"):
        token_tree([2, 0, -1], 2)
    with pytest.raises(ValueError, match="parents"):
        token_tree([0, 2, -1], 2)
    with pytest.raises(ValueError, match="cycle"):
        token_tree([4, 2, 3, 2, -1], 2)
    tree = token_tree([3, 3, 3, -1], 3)
    q = rand(1, 1, 4, 2)
    with pytest.raises(ValueError, match="does not cover the tokens"):
        hierarchical_attention(q, q, q, tree)
    with pytest.raises(TypeError, match="tree"):
        hierarchical_attention(q, q, q, [3, 3, 3, -1])
