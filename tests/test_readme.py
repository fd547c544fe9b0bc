"""The README's tour runs as written: every ```python block, in order, in one namespace (the second block uses the
first's imports), on CPU with random weights; its comments that show results are checked against the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_tour_has_python_blocks_that_parse():
    blocks = _python_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        ast.parse(block)


@pytest.mark.slow
def test_the_tour_runs_as_written():
    namespace: dict[str, object] = {"__name__": "readme"}
    for index, block in enumerate(_python_blocks()):
        exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    assert namespace["out"].shape == (2, 4, 32 * 32, 32)
    assert namespace["probs"].shape == (1, 3, 197, 197) and namespace["perturbed"].shape == (1, 1000)
    assert bool(namespace["entropy"].isfinite().all())


def test_the_list_mixers_comment_shows_the_first_mixers():
    import visattn

    line = next(line for line in README.read_text(encoding="utf-8").splitlines()
                if line.startswith("visattn.list_mixers()"))
    shown = ast.literal_eval(line.split("#", 1)[1].replace(", ...]", "]").strip())
    assert shown == visattn.list_mixers()[: len(shown)]
