"""Checkpoint writing for the training engine: `save_checkpoint` (atomic, sealed with a header and
a SHA-256) and `remove_stale_temps` (partial files of saves killed mid-write).

Reading is `medmtl.models.checkpoint.load_checkpoint` (safe: ``weights_only=True``, verified),
re-exported here together with the atomic writers of `medmtl.fileio`, so that engine code finds all
its checkpoint I/O in one place.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from medmtl.fileio import atomic_write_bytes as atomic_write_bytes
from medmtl.fileio import atomic_write_text as atomic_write_text
from medmtl.fileio import remove_stale_temps as remove_stale_temps
from medmtl.models.checkpoint import load_checkpoint as load_checkpoint
from medmtl.models.checkpoint import seal


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Seal (header + SHA-256), serialise in memory, then write atomically: a crash leaves the old
    file intact. Temp files of earlier saves of the same file that were killed are removed first
    (one writer per run folder: the run lock)."""
    path = Path(path)
    remove_stale_temps(path.parent, path.name)
    buf = io.BytesIO()
    torch.save(seal(dict(obj)), buf)
    atomic_write_bytes(path, buf.getvalue())
