"""Puts this folder on ``sys.path`` so that the trainer tests (and the processes they spawn) can
``from train_tiny import build_vit, data``."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
