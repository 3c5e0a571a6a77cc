"""Checkpoint I/O: atomic writes and safe loads.

A checkpoint is a plain dict of tensors and primitive values, so `torch.load(weights_only=True)`
reads it and a checkpoint from a stranger cannot run code.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Serialise in memory, then write atomically: a crash leaves the old file intact."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle refusing a non-tensor object, truncated file, ...
        raise ValueError(
            f"{path}: not a loadable medmtl checkpoint (only tensors and plain values are "
            f"accepted; weights_only=True): {e}"
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a medmtl checkpoint (missing 'model' or 'config')")
    return ckpt
