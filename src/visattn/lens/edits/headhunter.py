"""HeadHunter: greedy search for the attention heads whose perturbation best serves an objective.

Ahn et al., "Fine-Grained Perturbation Guidance via Attention Head Selection", arXiv 2506.10978
(code: cvlab-kaist/HeadHunter, 5 rounds of top-3 over SD3's 24 x 24 heads, PickScore as the objective). Each
round scores every candidate head ``c`` not chosen yet by ``score_fn(chosen + [c])`` (e.g. the objective of images
generated with :class:`~visattn.lens.edits.SoftPerturbedAttention` on those heads) and adds the ``top_k`` best.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

Head = tuple[int, int]


@dataclass
class HeadSearch:
    """The result of :func:`head_hunter`: the chosen heads in order and every round's scores."""

    selected: list[Head]
    rounds: list[dict[Head, float]] = field(default_factory=list)


def head_hunter(score_fn: Callable[[list[Head]], float], candidate_heads: Sequence[Head], rounds: int = 5,
                top_k: int = 3) -> HeadSearch:
    """Greedy head search: ``rounds`` rounds, each adding the ``top_k`` candidates with the highest
    ``score_fn(selected + [candidate])`` (higher is better; ties keep the candidates' order).

    Args:
        score_fn: the objective of a set of ``(layer, head)`` pairs; must return a finite number.
        candidate_heads: the ``(layer, head)`` pairs to search, without repeats.
        rounds: number of rounds (stops early when no candidate is left).
        top_k: heads added per round.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    candidates = _candidates(candidate_heads)
    for name, value in (("rounds", rounds), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    search = HeadSearch(selected=[])
    for _ in range(rounds):
        left = [c for c in candidates if c not in search.selected]
        if not left:
            break
        scores = {c: _score(score_fn, search.selected + [c]) for c in left}
        search.rounds.append(scores)
        ranked = sorted(left, key=lambda c: -scores[c])
        search.selected.extend(ranked[:top_k])
    return search


def _candidates(candidate_heads: Sequence[Head]) -> list[Head]:
    if isinstance(candidate_heads, (str, bytes)) or not isinstance(candidate_heads, Sequence) or not candidate_heads:
        raise TypeError(f"candidate_heads must be a non-empty sequence of (layer, head) pairs, got "
                        f"{candidate_heads!r}")
    out: list[Head] = []
    for pair in candidate_heads:
        if (not isinstance(pair, Sequence) or len(pair) != 2
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in pair)):
            raise TypeError(f"candidate_heads must contain (layer, head) pairs of non-negative ints, got {pair!r}")
        head = (pair[0], pair[1])
        if head in out:
            raise ValueError(f"candidate_heads repeats {head}")
        out.append(head)
    return out


def _score(score_fn: Callable[[list[Head]], float], heads: list[Head]) -> float:
    value = score_fn(list(heads))
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"score_fn must return a finite number, got {value!r} for heads {heads}")
    return float(value)
