"""Where ``visattn bench`` writes its JSON and plot: by default both into a new timestamped folder under
``./visattn-bench/``; paths given with ``--json``/``--plot`` replace the defaults (only what is named is written);
``--no-save`` writes nothing by default. The default folder is chosen and checked before the run and created when
the results are written, so that a run stopped by bad input leaves no empty folder behind."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

RESULTS_DIR = Path("visattn-bench")
JSON_NAME = "bench.json"
PLOT_NAME = "bench.png"


def _check_writable(folder: Path) -> None:
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"results folder {str(folder)!r} cannot be created: {str(existing)!r} is not a writable "
                         "folder; pass --json PATH and --plot PATH, or --no-save")


def new_results_dir(root: Path = RESULTS_DIR, now: datetime.datetime | None = None) -> Path:
    """``root/YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... appended when it exists), checked to be creatable, not
    created."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    folder = root / stamp
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = root / f"{stamp}-{suffix}"
    _check_writable(folder)
    return folder


def output_paths(json_path: str | None, plot_path: str | None, save: bool, root: Path = RESULTS_DIR,
                 now: datetime.datetime | None = None) -> tuple[Path | None, Path | None]:
    """The JSON and plot paths of a run: those given; else, when ``save``, ``bench.json`` and ``bench.png`` in
    the folder :func:`new_results_dir` names (create it with :func:`prepare`); else none."""
    if json_path or plot_path:
        return (Path(json_path) if json_path else None), (Path(plot_path) if plot_path else None)
    if not save:
        return None, None
    folder = new_results_dir(root, now)
    return folder / JSON_NAME, folder / PLOT_NAME


def prepare(path: Path) -> Path:
    """Create the folder ``path`` is to be written into (the default results folder) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
