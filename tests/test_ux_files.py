"""Issue #15.6: atomically written files get the umask's permissions (colleagues can read a
shared comparison folder), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from medmtl.fileio import atomic_write_bytes, atomic_write_text, current_umask


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="no POSIX permissions on this OS")
@pytest.mark.parametrize(("mask", "want"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_file_follows_umask(tmp_path: Path, umask: None, mask: int, want: int) -> None:
    os.umask(mask)
    assert current_umask() == mask
    atomic_write_text(tmp_path / "metrics.json", "{}")
    atomic_write_bytes(tmp_path / "w" / "best.pt", b"\0")
    assert mode(tmp_path / "metrics.json") == want
    assert mode(tmp_path / "w" / "best.pt") == want
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="no POSIX permissions on this OS")
def test_replaced_file_keeps_its_mode(tmp_path: Path, umask: None) -> None:
    os.umask(0o022)
    p = tmp_path / "history.csv"
    p.write_text("old")
    p.chmod(0o640)
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert mode(p) == 0o640
