"""Training checkpoints that a run resumes from exactly: model, optimiser, scheduler, gradient scaler, data
position and every random generator's state, written atomically (a temporary file renamed over the old one, so a
run killed while saving leaves the previous checkpoint intact).

The file is :func:`torch.save` of a plain dict. Two runs that reach the same state write the same bytes except for
the ``.data/serialization_id`` record, which torch fills with a fresh random id on every save;
:func:`checkpoint_fingerprint` hashes every other record (the pickled structure and each tensor's bytes), so two
checkpoints with equal fingerprints are bit-identical in everything they hold (the kill-and-resume test compares
them). For this, :func:`save_checkpoint` writes a canonical copy of the state: fresh containers and interned
strings, so that pickle's memo (which shares repeated objects) does not depend on where the objects came from
(a resumed run's optimiser state comes from unpickling, a fresh run's from Python literals).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1
"""Bumped when the checkpoint's keys change meaning."""


def rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators (CUDA's too where present)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002 (the global state user code may draw from)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all CUDA devices included)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global state user code may draw from)
    torch.manual_seed(seed)


def _canonical(value: Any) -> Any:
    """``value`` with every dict, list and tuple rebuilt and every string interned (tensors and arrays as they
    are), so that its pickle depends only on the values it holds."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {_canonical(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_canonical(v) for v in value)
    return value


SERIALIZATION_ID = ".data/serialization_id"
"""The record torch fills with a random id on every save; :func:`checkpoint_fingerprint` leaves it out."""


def checkpoint_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 of every record of the checkpoint file at ``path`` but torch's random serialization id (record
    names taken without the archive's top folder, which follows the file name)."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            inner = name.split("/", 1)[-1]
            if inner == SERIALIZATION_ID:
                continue
            digest.update(inner.encode() + b"\0")
            digest.update(archive.read(name))
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format number) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(_canonical({"format": FORMAT, **state}), partial)
    os.replace(partial, path)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; ``ValueError`` for a file of another format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {str(path)!r} has format {found!r}, expected {FORMAT}")
    return state
