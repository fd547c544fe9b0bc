import math

import numpy as np
import pytest

from visattn.search.scanpath_metrics import behaviour, levenshtein, multimatch, needleman_wunsch, sequence_score


def _naive_nw(a, b, match, mismatch, gap):
    if not a:
        return gap * len(b)
    if not b:
        return gap * len(a)
    s = match if a[-1] == b[-1] else mismatch
    return max(_naive_nw(a[:-1], b[:-1], match, mismatch, gap) + s, _naive_nw(a[:-1], b, match, mismatch, gap) + gap,
               _naive_nw(a, b[:-1], match, mismatch, gap) + gap)


def test_needleman_wunsch_hand_values():
    # LCS of [1,2,3,4] and [1,3,4,5] is [1,3,4]: score 3, sequence score 3/4
    assert needleman_wunsch([1, 2, 3, 4], [1, 3, 4, 5]) == 3.0
    assert sequence_score([1, 2, 3, 4], [1, 3, 4, 5]) == 0.75
    # match 2, mismatch -1, gap -1: align 1-1, 2/3 mismatch, 4 vs gap: 2 - 1 + ... best = 2 + (-1) + 2 + (-1)?
    # [1,2,4] vs [1,3,4]: diagonal all the way: 2 - 1 + 2 = 3 (gaps cost more)
    assert needleman_wunsch([1, 2, 4], [1, 3, 4], match=2, mismatch=-1, gap=-1) == 3.0
    # [1] vs [1,2,3]: match + 2 gaps = 2 - 2 = 0
    assert needleman_wunsch([1], [1, 2, 3], match=2, mismatch=-1, gap=-1) == 0.0
    assert sequence_score([5, 6], [5, 6]) == 1.0


def test_needleman_wunsch_random_against_naive():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = list(rng.integers(0, 4, rng.integers(0, 6)))
        b = list(rng.integers(0, 4, rng.integers(1, 6)))
        for scoring in ((1.0, 0.0, 0.0), (2.0, -1.0, -0.5), (1.0, -0.3, -1.0)):
            assert needleman_wunsch(a, b, *scoring) == pytest.approx(_naive_nw(a, b, *scoring))


def test_levenshtein_hand_values():
    assert levenshtein([1, 2, 3], [1, 2, 3]) == 0
    assert levenshtein([1, 2, 3], [1, 3]) == 1
    assert levenshtein([1, 2, 3], [3, 2, 1]) == 2
    assert levenshtein([], [4, 5]) == 2


def test_multimatch_identical_and_hand_values():
    a = np.array([[0, 0, 100], [10, 0, 200], [10, 10, 100]], dtype=float)
    out = multimatch(a, a, (30, 40))
    assert all(v == pytest.approx(1.0) for v in out.values())
    # b: the same first saccade, second saccade (-10, 0) instead of (0, 10); durations doubled
    b = np.array([[0, 0, 200], [10, 0, 400], [0, 0, 200]], dtype=float)
    out = multimatch(a, b, (30, 40))
    diag = 50.0
    # path is the diagonal: diffs 0 and |(0,10)-(-10,0)| = sqrt(200)
    assert out["vector"] == pytest.approx(1 - (0 + math.sqrt(200)) / 2 / (2 * diag))
    assert out["direction"] == pytest.approx(1 - (0 + math.pi / 2) / 2 / math.pi)
    assert out["length"] == pytest.approx(1.0)
    assert out["position"] == pytest.approx(1.0)  # start points (0,0) and (10,0) for both
    assert out["duration"] == pytest.approx(0.5)
    assert math.isnan(multimatch(a[:, :2], b, (30, 40))["duration"])


def test_multimatch_unequal_lengths_path():
    a = np.array([[0, 0], [10, 0], [20, 0], [30, 0]], dtype=float)
    b = np.array([[0, 0], [30, 0]], dtype=float)
    out = multimatch(a, b, (30, 40))
    # every saccade of a aligns with b's only one: |(10,0)-(30,0)| = 20 three times
    assert out["vector"] == pytest.approx(1 - 20 / 100)
    assert out["direction"] == pytest.approx(1.0)
    assert out["length"] == pytest.approx(1 - 20 / 50)
    assert out["position"] == pytest.approx(1 - (0 + 10 + 20) / 3 / 50)


def test_behaviour_shares():
    # fixations: 3 (search), 3 (refix), 5 (search), 3 (revisit), 7 (target, none), 7 (refix)
    b = behaviour([3, 3, 5, 3, 7, 7], target=7)
    assert b.target_found and b.length == 6
    assert b.search_share == pytest.approx(2 / 6)
    assert b.refixation_share == pytest.approx(2 / 6)
    assert b.revisit_share == pytest.approx(1 / 6)
    assert not behaviour([1, 2], target=7).target_found


def test_bad_inputs():
    with pytest.raises(ValueError, match="both be empty"):
        sequence_score([], [])
    with pytest.raises(TypeError, match="a must be a sequence"):
        needleman_wunsch("abc", [1])
    with pytest.raises(ValueError, match="gap"):
        needleman_wunsch([1], [1], gap=float("nan"))
    with pytest.raises(ValueError, match="a must be an"):
        multimatch(np.zeros((1, 2)), np.zeros((3, 2)), (10, 10))
    with pytest.raises(ValueError, match="screen"):
        multimatch(np.zeros((2, 2)), np.zeros((3, 2)), (0, 10))
