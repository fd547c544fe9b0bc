"""The shared cache of masks and plans: bounded by ``$VISATTN_CACHE_BYTES``, LRU by bytes, ``visattn.clear_caches``."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import visattn
from visattn import _cache
from visattn.masks import neighborhood_mask, window_mask
from visattn.ops.engines.dense import dense_mask
from visattn.ops.engines.tile_plan import tile_plan

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def empty_cache():
    visattn.clear_caches()
    yield
    visattn.clear_caches()


def test_nbytes_counts_tensors_arrays_and_bytes_once():
    t = torch.zeros(10, 10)
    assert _cache.nbytes_of(t) == 400
    assert _cache.nbytes_of((t, t[1:], {"a": t})) == 400  # one storage
    assert _cache.nbytes_of([np.zeros(8), b"xyz", "text", 3, None]) == 64 + 3
    assert _cache.nbytes_of(torch.empty(1000, device="meta")) == 0


def test_dense_masks_stay_under_the_budget_least_recently_used_dropped(monkeypatch):
    """Each 30 x 30 grid's dense mask is 810,000 bytes; a 2 MB budget holds two of them."""
    monkeypatch.setenv("VISATTN_CACHE_BYTES", str(2_000_000))
    mask = window_mask(3)
    first = dense_mask(mask, (30, 30), 0, CPU)
    assert dense_mask(mask, (30, 30), 0, CPU) is first  # cached
    second = dense_mask(mask, (30, 30), 1, CPU)
    assert _cache.cache_bytes() <= 2_000_000
    dense_mask(mask, (30, 30), 0, CPU)  # first is now the most recently used
    third = dense_mask(mask, (30, 30), 2, CPU)
    assert _cache.cache_bytes() <= 2_000_000
    assert dense_mask(mask, (30, 30), 0, CPU) is first and dense_mask(mask, (30, 30), 2, CPU) is third
    assert dense_mask(mask, (30, 30), 1, CPU) is not second  # the least recently used went
    assert torch.equal(dense_mask(mask, (30, 30), 1, CPU), second)


def test_an_entry_over_the_budget_is_returned_not_kept(monkeypatch):
    monkeypatch.setenv("VISATTN_CACHE_BYTES", str(100_000))
    mask = window_mask(3)
    small = dense_mask(mask, (6, 6), 0, CPU)
    big = dense_mask(mask, (30, 30), 0, CPU)  # 810,000 bytes
    assert big.shape == (900, 900) and dense_mask(mask, (30, 30), 0, CPU) is not big
    assert dense_mask(mask, (6, 6), 0, CPU) is small  # not evicted by an entry that could never fit
    assert 0 < _cache.cache_bytes() <= 100_000


def test_zero_budget_keeps_nothing(monkeypatch):
    monkeypatch.setenv("VISATTN_CACHE_BYTES", "0")
    mask = window_mask(3)
    assert dense_mask(mask, (6, 6), 0, CPU) is not dense_mask(mask, (6, 6), 0, CPU)
    assert _cache.cache_bytes() == 0


def test_clear_caches_frees_plans_and_their_device_tensors():
    plan = tile_plan(neighborhood_mask(3), (9, 9))
    tensors = plan.tensors(torch.float32, CPU)
    assert plan.tensors(torch.float32, CPU) is tensors and _cache.cache_bytes() > 0
    held = weakref.ref(tensors.query_index)
    plan_ref = weakref.ref(plan)
    del plan, tensors
    gc.collect()
    assert held() is not None and plan_ref() is not None  # the cache keeps them alive
    visattn.clear_caches()
    gc.collect()
    assert held() is None and plan_ref() is None
    assert _cache.cache_bytes() == 0


def test_cache_clear_of_one_function_keeps_the_others():
    mask = window_mask(3)
    kept = tile_plan(mask, (6, 6))
    dense_mask(mask, (6, 6), 0, CPU)
    before = _cache.cache_bytes()
    dense_mask.cache_clear()
    assert 0 < _cache.cache_bytes() < before
    assert tile_plan(mask, (6, 6)) is kept


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_bad_budget_raises(monkeypatch, value):
    monkeypatch.setenv("VISATTN_CACHE_BYTES", value)
    with pytest.raises(ValueError, match="VISATTN_CACHE_BYTES must be a number of bytes >= 0"):
        dense_mask(window_mask(3), (6, 6), 0, CPU)
