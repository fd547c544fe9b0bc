"""Comparing bench runs from their JSON: rows timed in every run, agreement, machine states, bad files."""

import json

import pytest

from visattn.bench import compare


def _run(ratios, state=None, median_ms=2.0):
    records = [{"label": label, "tokens": tokens, "ratio_to_sdpa": ratio, "median_ms": median_ms}
               for (label, tokens), ratio in ratios.items()]
    machine = {"median_ms": state} if state is not None else {}
    return {"records": records, "environment": {"machine_state": machine}, "exponents": {}}


def test_rows_timed_in_every_run_are_compared_in_the_first_runs_order():
    a = _run({("window", 1024): 10.0, ("linear", 1024): 2.0, ("paro", 4096): None})
    b = _run({("linear", 1024): 2.5, ("window", 1024): 11.0, ("axial", 1024): 3.0})
    rows = compare.compare_rows([a, b])
    assert [(r.label, r.ratios) for r in rows] == [("window", (10.0, 11.0)), ("linear", (2.0, 2.5))]
    assert rows[0].spread == pytest.approx(0.1) and rows[0].agrees() and not rows[1].agrees()
    assert rows[1].agrees(0.25)


def test_rows_under_the_minimum_in_every_run_are_left_out():
    fast = [_run({("window", 1024): 10.0}, median_ms=0.5), _run({("window", 1024): 20.0}, median_ms=0.6)]
    assert compare.compare_rows(fast) == [] and len(compare.compare_rows(fast, min_ms=0.1)) == 1


def test_machine_states_that_differ_are_told():
    medians = compare.state_medians([_run({}, 0.66), _run({}, 1.12), _run({})])
    assert medians == [0.66, 1.12, None] and compare.states_differ(medians)
    assert not compare.states_differ([0.66, 0.7, None]) and not compare.states_differ([0.66, None])


def test_a_file_that_is_not_a_bench_run_is_refused(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="other.json.*not the JSON of a visattn bench run"):
        compare.load_run(tmp_path / "other.json")
    with pytest.raises(ValueError, match="broken.json.*is not JSON"):
        compare.load_run(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="at least two runs"):
        compare.compare_rows([_run({})])
