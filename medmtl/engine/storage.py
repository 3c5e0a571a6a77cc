"""`tune --storage URL`: the Optuna storage checked before any work, so that a bad URL is one line
naming ``--storage``, what is wrong and an example of a valid URL (exit 2), never a SQLAlchemy
traceback or a hang.

`check_storage` refuses: text that is no database URL (a bare path, a YAML file, garbage), a
scheme Optuna's RDB storage does not serve (supported: sqlite, postgresql, mysql), an SQLite URL
without a file, whose file is a folder, whose folder does not exist or is read-only, or whose
file is not an SQLite database; a database server that does not answer within
`CONNECT_TIMEOUT_S` seconds (a TCP connection to its host and port, so a closed port fails at
once), and a server URL whose Python driver is not installed. `open_error` turns what Optuna
raises while opening a storage that passed (a refused login, a foreign schema) into the same
one line.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from medmtl.errors import InputError, clip_text

EXAMPLE = "e.g. sqlite:///runs/tune/study.db or postgresql://user@host/db"
SERVER_PORTS = {"postgresql": 5432, "mysql": 3306}  # the default port of each server scheme
DRIVERS = {"postgresql": "psycopg2-binary", "mysql": "pymysql (and use mysql+pymysql://)"}
CONNECT_TIMEOUT_S = 5.0
MAX_URL_CHARS = 2000
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _fail(url: str, why: str) -> InputError:
    return InputError(f"--storage {clip_text(url)!r}: {why}; give an Optuna storage URL, "
                      f"{EXAMPLE}")


def _kind(p: Path) -> str | None:
    """"a folder" / "a file" / None (nothing there, or a name the OS refuses)."""
    try:
        return "a folder" if p.is_dir() else "a file" if p.exists() else None
    except (OSError, ValueError):
        return None


def _is_sqlite(p: Path) -> bool:
    """An SQLite database file, or an empty file (SQLite makes one of it)."""
    with p.open("rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    return not head or head == _SQLITE_MAGIC


def check_storage(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise `InputError` (one line naming --storage) unless `url` is a usable storage URL."""
    text = url.strip()
    if not text:
        raise _fail(url, "empty")
    if len(text) > MAX_URL_CHARS:
        raise _fail(url, f"longer than {MAX_URL_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _fail(url, "holds control characters (a NUL byte, a line break)")
    if "://" not in text:
        p = Path(text).expanduser()
        kind = _kind(p)
        if kind == "a file" and not _is_sqlite(p):
            raise _fail(url, "a file that is no SQLite database, not a database URL")
        raise _fail(url, f"{kind}, not a database URL (for an SQLite file: sqlite:///"
                    f"{p.absolute()})" if kind else "not a database URL (no scheme://)")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(text)
        backend = u.get_backend_name()
    except (ArgumentError, ValueError) as e:
        raise _fail(url, f"not a database URL ({clip_text(str(e).splitlines()[0], 120)})") \
            from None
    if backend == "sqlite":
        _check_sqlite(url, u.database)
        return
    if backend not in SERVER_PORTS:
        raise _fail(url, f"unsupported scheme {clip_text(u.drivername)!r} (supported: sqlite, "
                    f"{', '.join(SERVER_PORTS)})")
    _check_server(url, backend, u.host, u.port, timeout)
    _check_driver(url, backend, u)


def _check_sqlite(url: str, database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise _fail(url, "names no database file (an in-memory study is lost when tune ends, "
                    "so a killed search could not resume)")
    p = Path(database).expanduser()
    try:
        if p.is_dir():
            raise _fail(url, f"{p} is a folder; name a database file in it (sqlite:///"
                        f"{p.absolute() / 'study.db'})")
        parent = p.absolute().parent
        if not parent.is_dir():
            raise _fail(url, f"folder {parent} does not exist (create it, or name a file in an "
                        "existing folder)")
        if p.is_file():
            if not _is_sqlite(p):
                raise _fail(url, f"{p} is not an SQLite database (its first bytes say otherwise"
                            f"{': a ' + p.suffix + ' file?' if p.suffix else ''})")
            if not os.access(p, os.R_OK | os.W_OK):
                raise _fail(url, f"{p} is not readable and writable by this user")
        elif not os.access(parent, os.W_OK | os.X_OK):
            raise _fail(url, f"cannot create {p.name} in {parent} (no write permission)")
    except InputError:
        raise
    except (OSError, ValueError) as e:  # unreadable, a name the OS refuses
        why = getattr(e, "strerror", None) or type(e).__name__
        raise _fail(url, f"cannot use {clip_text(p)} ({why})") from None


def _check_server(url: str, backend: str, host: str | None, port: int | None,
                  timeout: float) -> None:
    """A TCP connection to the server's host and port within `timeout` seconds (a Unix socket,
    no host in the URL, is left to the driver)."""
    if not host:
        return
    port = port or SERVER_PORTS[backend]
    if not 0 < port < 65536:
        raise _fail(url, f"port {port} is not a TCP port (1-65535)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        raise _fail(url, f"no answer from {host}:{port} within {timeout:g} s (is the "
                    f"{backend} server running, and reachable from here?)") from None
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise _fail(url, f"cannot connect to {host}:{port} ({why}; is the {backend} server "
                    "running?)") from None


def _check_driver(url: str, backend: str, u: Any) -> None:
    from sqlalchemy.exc import NoSuchModuleError

    try:
        dialect = u.get_dialect()
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
    except (ImportError, NoSuchModuleError) as e:
        raise _fail(url, f"the {backend} driver is not installed ({clip_text(e, 100)}): pip "
                    f"install {DRIVERS[backend]}") from None


def open_error(storage: str, e: Exception) -> InputError:
    """What Optuna raised while opening `storage` (SQLAlchemy, a foreign schema) as one line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    return _fail(storage, f"cannot open it as an Optuna storage ({clip_text(first, 200)})")


__all__ = ["CONNECT_TIMEOUT_S", "EXAMPLE", "check_storage", "open_error"]
