"""Every lens test starts and ends with no active edits or recorders, whatever it leaves behind."""

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
