"""Fixtures shared across the test tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # shared oracles: ``from oracles import ...``


def pytest_configure(config):
    """Where a C++ compiler exists, the kernels must build: VISATTN_REQUIRE_NATIVE=1 for the session turns a failed
    build into a RuntimeError (tests fail) instead of a silent PyTorch fallback (kernel tests skipped). The level
    built is always one this CPU runs (visattn.ops.native.isa_level)."""
    from visattn.ops import native

    if "VISATTN_REQUIRE_NATIVE" not in os.environ and native.available_compiler() is not None:
        os.environ["VISATTN_REQUIRE_NATIVE"] = "1"


@pytest.fixture(autouse=True)
def system_allocator(monkeypatch):
    """``visattn bench`` keeps freed memory for the rest of its process (visattn.bench.allocator); tests that call
    the CLI in-process keep glibc's defaults so the test process is not changed. Subprocess tests check the real
    behaviour."""
    import visattn.cli

    monkeypatch.setattr(visattn.cli, "keep_freed_memory", lambda: False)


@pytest.fixture
def one_thread():
    """Run a test on one thread and restore the setting after: tiny tensors gain nothing from a second thread, and on
    a shared 2-core machine waking it costs milliseconds per op. Files opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
