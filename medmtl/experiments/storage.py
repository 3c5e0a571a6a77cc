"""`tune --storage URL`: the Optuna storage checked before any work, so that a bad URL is one line
naming ``--storage``, what is wrong and an example of a valid URL (exit 2), never a SQLAlchemy
traceback or a hang.

`check_storage` refuses: text that is no database URL (a bare path, a YAML file, garbage), a
scheme Optuna's RDB storage does not serve (supported: sqlite, postgresql, mysql), an SQLite URL
without a file, whose file is a folder, whose folder does not exist or is read-only, or whose
file is not an SQLite database; a database server that does not answer within
`CONNECT_TIMEOUT_S` seconds (a TCP connection to its host and port, so a closed port fails at
once), and a server URL whose Python driver is not installed. `open_error` turns what Optuna
raises while opening a storage that passed (a refused login, a foreign schema, a database that
does not exist) into the same one line, with what to do. A password in the URL is shown as ``***``.

`open_storage` is the storage every tune process uses: Optuna's RDB storage with a heartbeat
(`HEARTBEAT_S`): a trial whose process vanished (a killed job, a machine gone) stops beating and
is failed by the next process after `GRACE_S` seconds, and Optuna's retry callback queues its
parameters again, so that a study shared by several machines resumes without a lost trial.
`StorageLost` is the one line of a database server that went away during a search.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from medmtl.errors import InputError, MedmtlError, clip_text

EXAMPLE = "e.g. sqlite:///runs/tune/study.db or postgresql://user@host/db"
SERVER_PORTS = {"postgresql": 5432, "mysql": 3306}  # the default port of each server scheme
DRIVERS = {"postgresql": "'psycopg[binary]' (or: pip install 'medmtl[postgres]')",
           "mysql": "pymysql (and use mysql+pymysql://)"}
CONNECT_TIMEOUT_S = 5.0
HEARTBEAT_S = 10  # a running trial records a heartbeat in the storage this often
GRACE_S = 60  # a RUNNING trial without a heartbeat this long is failed, its parameters re-queued
MAX_RETRY = 3  # re-runs of one configuration whose workers vanished, then it stays failed
_PASSWORD = re.compile(r"(://[^/@:]*:)[^@/]*@")
MAX_URL_CHARS = 2000
_SQLITE_MAGIC = b"SQLite format 3\x00"


def shown(url: str) -> str:
    """`url` as messages and tune.json show it: the password, if any, as ``***``, clipped."""
    return clip_text(_PASSWORD.sub(r"\1***@", url))


def _fail(url: str, why: str) -> InputError:
    return InputError(f"--storage {shown(url)!r}: {why}; give an Optuna storage URL, "
                      f"{EXAMPLE}")


class StorageLost(MedmtlError):
    """The database server went away during a search (exit status 1: the search stopped, the
    trials it finished are kept in the database)."""

    exit_code = 1


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
    _check_driver(url, backend, make_url(driver_url(text)))


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


def _importable(u: Any) -> None:
    """Raise ImportError (or NoSuchModuleError) unless the driver of URL object `u` imports."""
    dialect = u.get_dialect()
    (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()


def driver_url(url: str) -> str:
    """`url`, a plain ``postgresql://`` naming the driver that is installed: SQLAlchemy's default
    for it is psycopg2 before SQLAlchemy 2.1 and psycopg (3) since, and medmtl's `postgres` extra
    installs psycopg."""
    if not url.startswith("postgresql://"):
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    for candidate in (url, "postgresql+psycopg://" + url[len("postgresql://"):],
                      "postgresql+psycopg2://" + url[len("postgresql://"):]):
        try:
            _importable(make_url(candidate))
            return candidate
        except (ImportError, NoSuchModuleError, ArgumentError, ValueError):
            continue
    return url


def _check_driver(url: str, backend: str, u: Any) -> None:
    from sqlalchemy.exc import NoSuchModuleError

    try:
        _importable(u)
    except (ImportError, NoSuchModuleError) as e:
        raise _fail(url, f"the {backend} driver is not installed ({clip_text(e, 100)}): pip "
                    f"install {DRIVERS[backend]}") from None


def _first_line(e: BaseException) -> str:
    """The first line of what the database said: the SQLAlchemy error behind Optuna's generic
    StorageInternalError, without SQLAlchemy's "(Background on this error ...)" tail."""
    cause = e.__cause__ if type(e).__name__ == "StorageInternalError" and e.__cause__ else e
    text = str(getattr(cause, "orig", None) or cause)
    lines = [ln.strip() for ln in text.strip().splitlines()
             if ln.strip() and not ln.strip().startswith("(Background on this error")]
    return clip_text(lines[0] if lines else type(cause).__name__, 200)


# what the server said -> what to do about it
_HINTS = (("does not exist", "create it first (docs/multi-machine.md: createdb -O USER DB)"),
          ("password authentication failed", "check the user name and password in the URL"),
          ("no password supplied", "put the password in the URL (user:password@host) or in "
                                   "~/.pgpass"),
          ("no pg_hba.conf entry", "allow this host in the server's pg_hba.conf"),
          ("Connection refused", "is the server running, and listening on that address?"),
          ("No such file or directory", "no local server socket: name the host in the URL "
                                        "(postgresql://user@HOST:5432/db)"))


def open_error(storage: str, e: BaseException) -> InputError:
    """What Optuna raised while opening `storage` (SQLAlchemy, a foreign schema) as one line."""
    first = _first_line(e)
    hint = next((h for k, h in _HINTS if k.lower() in first.lower()), None)
    return _fail(storage, f"cannot open it as an Optuna storage ({first})"
                 + (f"; {hint}" if hint else ""))


def lost_error(storage: str, e: BaseException, kept: int) -> StorageLost:
    """The one line of a storage that failed during a search (a server stopped, a network cut)."""
    return StorageLost(f"--storage {shown(storage)!r}: lost the database during the search "
                       f"({_first_line(e)}); the {kept} trial(s) it had finished are kept: "
                       "when the database is back, run the same command again to resume (a "
                       "trial left running is run again)")


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a storage that cannot be reached or written raises (never a trial's own error)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError, optuna.exceptions.StorageInternalError


def retry_callback() -> Any:
    """Optuna's callback that queues again the parameters of a trial whose worker vanished."""
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
        or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=MAX_RETRY)


def open_storage(url: str, attempts: int = 3) -> Any:
    """Optuna's RDB storage of `url` with the heartbeat and the retry callback. A server's pooled
    connections are checked before use (a server restarted between two trials is reconnected),
    and a PostgreSQL connection gives up after `CONNECT_TIMEOUT_S`. Processes creating the tables
    of a new database at the same moment may collide: that is retried. Errors: `open_error`."""
    import optuna

    engine: dict[str, Any] = {}
    target = driver_url(url)
    if not url.startswith("sqlite"):
        engine["pool_pre_ping"] = True
        if url.startswith("postgresql"):
            engine["connect_args"] = {"connect_timeout": int(CONNECT_TIMEOUT_S)}
    kw: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    names = optuna.storages.RDBStorage.__init__.__code__.co_varnames
    cb = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names \
        else "failed_trial_callback"  # Optuna < 4.9
    kw[cb] = retry_callback()
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(target, engine_kwargs=engine, **kw)
        except (*storage_errors(), optuna.exceptions.OptunaError, RuntimeError, ValueError,
                ImportError) as e:
            if attempt + 1 == attempts or not _collision(e):
                raise open_error(url, e) from e
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _collision(e: BaseException) -> bool:
    """Another process created the same table or row at the same moment."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    cause = e.__cause__ or e
    return isinstance(cause, IntegrityError | ProgrammingError) or "already exists" in str(cause)


def _storage_cause(e: BaseException, errors: tuple[type[BaseException], ...]
                   ) -> BaseException | None:
    """The storage error `e` is or arose from (Optuna may raise another error while handling a
    lost database, e.g. an UnboundLocalError in its own clean-up), else None."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, errors):
            return x
        stack += [x.__cause__, x.__context__]
    return None


def _quiet_heartbeat_errors(errors: tuple[type[BaseException], ...]) -> Any:
    """A `threading.excepthook` that drops a storage error of Optuna's heartbeat thread (the
    main thread meets the same lost server at its next call and says it in one line)."""
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if not isinstance(args.exc_value, errors):
            previous(args)

    threading.excepthook = hook
    return previous


__all__ = ["CONNECT_TIMEOUT_S", "EXAMPLE", "GRACE_S", "HEARTBEAT_S", "StorageLost",
           "check_storage", "driver_url", "lost_error", "open_error", "open_storage", "retry_callback", "shown",
           "storage_errors"]
