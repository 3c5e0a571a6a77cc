"""One writer per run folder: an advisory file lock (`filelock`, ``flock`` on Unix) held for the
run's life, in ``<run>/.lock``, with the holder written to ``<run>/.lock.owner`` (pid, host,
start time).

The kernel drops an ``flock`` when its process dies, ``kill -9`` included, so a lock left behind
by a dead run is free: the next run takes it over and says whose it was. A second live writer gets
`RunLocked` (exit status 2) naming the holder's pid and host.

`probe` is how a `compare` process (or a job-array task) asks whether a run folder is free
before it starts a run there: several compares sharing one folder never train one run twice.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from medmtl.errors import RunLocked
from medmtl.fileio import atomic_write_text

LOCK_NAME, OWNER_NAME = ".lock", ".lock.owner"
IN_USE = "run folder in use by"  # RunLocked's words (compare recognises a run taken elsewhere)


def _owner(run_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((run_dir / OWNER_NAME).read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process (owner unknown)"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since " \
           f"{info.get('started', '?')})"


class RunLock:
    """``with RunLock(run_dir): ...`` or ``acquire()`` / ``release()``. Re-entrant within one
    process (the same folder locked twice by one process is one hold)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.previous: dict[str, Any] = {}  # the owner record found when taking the lock
        self._lock: FileLock | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.run_dir / LOCK_NAME, timeout=0, is_singleton=True)
        try:
            lock.acquire()
        except Timeout:
            raise RunLocked(f"{self.run_dir}: {IN_USE} {_describe(_owner(self.run_dir))}"
                            "; wait for it to finish or choose another --out") from None
        self._lock = lock
        if lock.lock_counter == 1:  # first hold in this process: record the owner
            self.previous = _owner(self.run_dir)
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            atomic_write_text(self.run_dir / OWNER_NAME, json.dumps(me))
        return self

    @property
    def stale_owner(self) -> str | None:
        """Who held the lock before and died without releasing it (None if nobody)."""
        return _describe(self.previous) if self.previous else None

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        if lock.lock_counter == 1:
            (self.run_dir / OWNER_NAME).unlink(missing_ok=True)
        lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextmanager
def probe(run_dir: str | Path) -> Iterator[str | None]:
    """``with probe(run_dir) as holder:``: None when the run folder was free, and then its lock is
    held for the block (without recording an owner: the run that follows records itself); else
    who holds it (another live process). Release before starting the run's own process."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_NAME, timeout=0, is_singleton=True)
    try:
        lock.acquire()
    except Timeout:
        yield _describe(_owner(run_dir))
        return
    try:
        yield None
    finally:
        lock.release()


__all__ = ["IN_USE", "LOCK_NAME", "OWNER_NAME", "RunLock", "probe"]
