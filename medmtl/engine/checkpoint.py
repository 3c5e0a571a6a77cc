"""Checkpoint writing for the training engine: `save_checkpoint` (atomic).

Reading is `medmtl.models.checkpoint.load_checkpoint` (safe: ``weights_only=True``), re-exported
here together with the atomic writers of `medmtl.fileio`, so that engine code finds all its
checkpoint I/O in one place.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from medmtl.fileio import atomic_write_bytes as atomic_write_bytes
from medmtl.fileio import atomic_write_text as atomic_write_text
from medmtl.models.checkpoint import load_checkpoint as load_checkpoint


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Serialise in memory, then write atomically: a crash leaves the old file intact."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
