"""Atomic file writes (temp file in the same folder + ``os.replace``): a crash leaves the old file
intact. Used by every part that writes a result (run directory, COCO exports, predict summary)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temps(folder: str | Path, name: str = "*") -> list[Path]:
    """Delete the temp files ``.{name}.*.tmp`` that `atomic_write_bytes` leaves when its process
    is killed mid-write; returns them. Only for folders that one process writes (a run folder,
    under its lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = sorted(folder.glob(f".{name}.*.tmp"))
    for p in out:
        p.unlink(missing_ok=True)
    return out
