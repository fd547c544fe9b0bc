"""Every lens test starts and ends with no active edits or recorders; ``calls`` spies on the lens."""

from __future__ import annotations

import pytest

from visattn.lens import STATE


@pytest.fixture(autouse=True)
def clean_state():
    edits, recorders = list(STATE.edits), list(STATE.recorders)
    STATE.edits.clear()
    STATE.recorders.clear()
    yield
    STATE.edits[:] = edits
    STATE.recorders[:] = recorders


@pytest.fixture
def calls():
    """Every AttentionCall the lens makes while the test runs (a recorder owned by no context)."""
    seen = []

    def spy(call, tensors):
        seen.append(call)

    STATE.recorders.append(spy)
    yield seen
    STATE.recorders.remove(spy)
