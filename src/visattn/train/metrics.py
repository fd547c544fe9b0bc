"""Where a training run's metrics go: one JSON object per line in a file, and TensorBoard event files when the
``tensorboard`` package is installed (:mod:`torch.utils.tensorboard` needs it). Only rank 0 writes.

On resume, :meth:`MetricsLog.open` drops the lines of steps after the checkpoint's (the killed run logged them
before dying; the resumed run logs them again), so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be used (the ``tensorboard`` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


class MetricsLog:
    """JSON lines at ``path`` and, with ``tensorboard_dir`` and the package installed, TensorBoard scalars; the
    records are also kept in :attr:`records`. With ``path`` None nothing is written (ranks other than 0)."""

    def __init__(self, path: str | os.PathLike[str] | None,
                 tensorboard_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.tensorboard_dir = None if tensorboard_dir is None else Path(tensorboard_dir)
        self.records: list[dict[str, Any]] = []
        self._file: Any = None
        self._writer: Any = None
        self._open = False

    def open(self, resume_step: int | None = None) -> MetricsLog:
        """Start writing; with ``resume_step``, keep only the existing lines whose ``step`` is at most it."""
        self._open = True
        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if record.get("step", 0) <= resume_step:
                    self.records.append(record)
        self._file = self.path.open("w")
        self._file.writelines(json.dumps(record, sort_keys=True) + "\n" for record in self.records)
        self._file.flush()
        if self.tensorboard_dir is not None:
            if tensorboard_available():
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=resume_step)
            else:
                log.info("tensorboard is not installed; metrics go to %s only", self.path)
        return self

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (it must hold an int ``step``) as one line; numbers also go to TensorBoard."""
        if not self._open:
            raise RuntimeError("MetricsLog.write before open()")
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._open = False
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines metrics file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
