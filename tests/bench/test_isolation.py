"""visattn.bench.isolation: each case in a fresh child process gives the same records as in-process, and a child
that dies becomes skipped records instead of ending the run."""

import pytest

from probes import exit_at_once
from visattn.bench import BenchCase, BenchSettings, iter_bench
from visattn.bench.isolation import CaseProcesses, isolation_available

FAST = {"heads": 1, "head_dim": 8, "repeats": 2, "measure_memory": False, "min_sample_s": 0.0}

pytestmark = pytest.mark.skipif(not isolation_available(BenchSettings()), reason="no forkserver on this platform")


def test_isolated_cases_give_the_records_of_the_same_process():
    cases = ["neighborhood:kernel_size=3", "linear"]
    isolated = list(iter_bench(cases, [4, 6], BenchSettings(isolate=True, **FAST)))
    inline = list(iter_bench(cases, [4, 6], BenchSettings(**FAST)))
    assert [(r.label, r.shape, r.tokens, r.attended_pairs, r.skipped) for r in isolated] == \
        [(r.label, r.shape, r.tokens, r.attended_pairs, r.skipped) for r in inline]
    assert all(r.median_ms > 0 and r.sdpa_median_ms > 0 for r in isolated)


def test_a_child_that_dies_gives_skipped_records_and_the_next_case_runs():
    settings = BenchSettings(isolate=True, **FAST)
    with CaseProcesses(target=exit_at_once) as crashing:
        records, history = crashing.measure(BenchCase("linear"), [4, 6], settings, [(16, 1e-4)])
    assert [r.tokens for r in records] == [16, 36] and history == [(16, 1e-4)]
    assert all(r.median_ms is None and "the process timing it died" in r.skipped for r in records)
    with CaseProcesses() as processes:
        (record,), _ = processes.measure(BenchCase("linear"), [4], settings, [])
    assert record.skipped is None and record.median_ms > 0


def test_measure_outside_the_with_block_is_refused():
    with pytest.raises(RuntimeError, match="inside its with block"):
        CaseProcesses().measure(BenchCase("linear"), [4], BenchSettings(**FAST), [])
