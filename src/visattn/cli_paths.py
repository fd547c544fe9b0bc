"""Checks of the command line's output paths, made before any work starts so that a run is never lost to a path
it cannot write. Each failure is a ``ValueError`` whose message names the option, the path and what is wrong."""

from __future__ import annotations

import os
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_writable_folder(folder: Path, option: str, path: Path) -> None:
    if not folder.is_dir():
        raise ValueError(f"{option} {str(path)!r}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(path)!r}: the folder {str(folder)!r} is not writable")


def check_output_file(path: str | os.PathLike[str], option: str, example: str = "out") -> Path:
    """``path`` as a :class:`~pathlib.Path` if a file can be written there: not a folder, its parent folder exists
    and is writable, and an existing file there is writable (it will be replaced). ``example`` is a file name the
    message suggests inside a folder given by mistake."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; expected a file path, e.g. {str(path / example)!r}")
    parent = path.parent
    if not parent.exists():
        raise ValueError(f"{option} {str(path)!r}: the folder {str(parent)!r} does not exist; create it first")
    _check_writable_folder(parent, option, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {str(path)!r} exists and is not writable")
    return path


def check_output_folder(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as a :class:`~pathlib.Path` if files can be written into it: an existing writable folder, or a
    path that does not exist yet whose nearest existing ancestor is a writable folder (it is created later)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is an existing file; expected a folder to write into")
    _check_writable_folder(_nearest_existing(path), option, path)
    return path
