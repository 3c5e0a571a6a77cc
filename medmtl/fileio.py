"""Atomic file writes (temp file in the same folder + ``os.replace``): a crash leaves the old file
intact. Used by every part that writes a result (run directory, COCO exports, predict summary).

The file gets the permissions a plain ``open(path, "w")`` would give it: ``0666`` less the
process umask (``tempfile.mkstemp`` alone makes it ``0600``, which hides the run files of a shared
comparison folder from colleagues), or the mode of the file it replaces.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux's
    ``/proc/self/status``); elsewhere set-and-restore under a lock."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _target_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)  # keep the mode of the file replaced
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _target_mode(path))
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
