"""Puts this folder on ``sys.path`` so that family tests can ``from contract import check_timm_contract``."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
