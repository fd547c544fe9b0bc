"""HeadHunter (arXiv 2506.10978): the greedy search finds planted heads, scores each candidate together with the
heads already chosen, and rejects bad candidates and objectives; with SoftPAG through the lens it recovers the
heads whose perturbation produced a target output."""

from __future__ import annotations

import pytest
import torch

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import SoftPerturbedAttention, head_hunter

HEADS = [(layer, head) for layer in range(3) for head in range(4)]


def test_picks_planted_heads_in_order_of_value():
    value = {head: 0.01 * i for i, head in enumerate(HEADS)}
    value.update({(2, 1): 5.0, (0, 3): 4.0, (1, 0): 3.0, (1, 2): 2.0})
    search = head_hunter(lambda heads: sum(value[h] for h in heads), HEADS, rounds=2, top_k=2)
    assert search.selected == [(2, 1), (0, 3), (1, 0), (1, 2)]
    assert len(search.rounds) == 2 and len(search.rounds[1]) == len(HEADS) - 2


def test_scores_candidates_together_with_the_chosen_heads():
    concepts = {(0, 0): {"a", "b"}, (0, 1): {"a", "b"}, (1, 0): {"c"}, (1, 1): {"a"}}
    calls = []

    def coverage(heads):
        calls.append(list(heads))
        return len(set().union(*(concepts[h] for h in heads)))

    search = head_hunter(coverage, list(concepts), rounds=3, top_k=1)
    assert search.selected == [(0, 0), (1, 0), (0, 1)]
    assert calls[4] == [(0, 0), (0, 1)]


def test_stops_when_no_candidate_is_left():
    search = head_hunter(lambda heads: float(len(heads)), [(0, 0), (0, 1), (0, 2)], rounds=5, top_k=2)
    assert search.selected == [(0, 0), (0, 1), (0, 2)] and len(search.rounds) == 2


def test_recovers_the_heads_behind_a_target_through_the_lens():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 1, 4, 7, 8, generator=g, dtype=torch.float64) for _ in range(3))
    calls = [AttentionCall(layer=i, name=f"l{i}", q=q[i], k=k[i], v=v[i], scale=0.5) for i in range(3)]

    def outputs(heads):
        STATE.edits[:] = [SoftPerturbedAttention(0.8, head_pairs=heads)] if heads else []
        try:
            return torch.cat([lens_attention(call)[0] for call in calls])
        finally:
            STATE.edits.clear()

    planted = [(0, 1), (2, 3), (1, 2)]
    target = outputs(planted)
    search = head_hunter(lambda heads: -float((outputs(heads) - target).norm()), HEADS, rounds=3, top_k=1)
    assert sorted(search.selected) == sorted(planted)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="finite number"):
        head_hunter(lambda heads: float("nan"), HEADS)
    with pytest.raises(ValueError, match=r"repeats \(0, 0\)"):
        head_hunter(lambda heads: 0.0, [(0, 0), (0, 0)])
    with pytest.raises(TypeError, match="pairs of non-negative ints"):
        head_hunter(lambda heads: 0.0, [(0, -1)])
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        head_hunter(lambda heads: 0.0, HEADS, top_k=0)
    with pytest.raises(TypeError, match="score_fn must be callable"):
        head_hunter(None, HEADS)
