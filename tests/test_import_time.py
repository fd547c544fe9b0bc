"""A fast start: ``import visattn`` (and ``visattn --help`` / ``visattn list``) must not import the heavy modules.

Each check runs a fresh interpreter and lists what ended up in ``sys.modules``. Importing ``torch._dynamo`` (through
``torch.compiler`` decorators, FlexAttention, or timm, which imports torchvision), ``timm.models``, FlexAttention,
the lens, matplotlib or transformers costs seconds; they belong to the first call that needs them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch._dynamo", "timm", "timm.models", "torchvision", "torch.nn.attention.flex_attention", "visattn.lens",
         "matplotlib", "transformers")
"""Modules that must not be imported by ``import visattn``."""

HEAVY_FOR_COMMANDS = ("torch._dynamo", "timm.models", "visattn.lens", "transformers")
"""Modules that ``visattn --help`` and ``visattn list`` must not import."""


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def after_import() -> set[str]:
    return _loaded_after("import visattn")


@pytest.mark.parametrize("module", HEAVY)
def test_import_visattn_does_not_import_heavy_module(after_import, module):
    """Fails while a visattn module imports ``module`` at import time (see the module docstring for the cost)."""
    assert module not in after_import, f"`import visattn` imported {module}"


def test_lazy_submodules_still_resolve():
    loaded = _loaded_after("import visattn\n"
                           "assert visattn.lens.capture and visattn.cli.main and visattn.docgen.render\n"
                           "from visattn.nn import ConvPosEnc\nfrom timm.models.davit import ConvPosEnc as timms\n"
                           "assert ConvPosEnc is timms")
    assert "visattn.lens" in loaded


@pytest.mark.parametrize("argv", [["--help"], ["list"]], ids=["help", "list"])
def test_help_and_list_do_not_import_heavy_modules(argv):
    code = ("import contextlib, io\nfrom visattn import cli\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        cli.main({argv!r})\n    except SystemExit:\n        pass")
    loaded = _loaded_after(code)
    assert not [m for m in HEAVY_FOR_COMMANDS if m in loaded], json.dumps(sorted(set(HEAVY_FOR_COMMANDS) & loaded))
