"""A throw-away PostgreSQL server for the tests of `tune --storage postgresql://...`.

`initdb` into a fresh folder under the system's temporary directory, then `pg_ctl` on a free port
of 127.0.0.1 (no Unix socket outside that folder, no durability: fsync off). The server refuses
to run as root, so as root both run as an unprivileged user (``nobody``, through ``runuser`` or
``setpriv``) who owns the folder. The binaries are found on PATH or where Debian's `postgresql`
package puts them (/usr/lib/postgresql/<version>/bin); `.ci/run` installs that package when
neither has them. `unavailable()` says why a server cannot be had here (the tests skip with it);
a server that can be had but fails to start is an error, not a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "nobody"  # who runs the server when this process is root
DB_USER = "medmtl"  # the server's superuser (trust authentication on 127.0.0.1 only)
# fsync off: fast, and still safe against a server killed (`pg_ctl stop -m immediate`), only not
# against the machine failing; synchronous_commit stays on: a commit acknowledged is on disk
_SETTINGS = {"listen_addresses": "'127.0.0.1'", "fsync": "off", "full_page_writes": "off",
             "max_connections": "50", "shared_buffers": "16MB"}


def bin_dir() -> Path | None:
    """The folder of initdb and pg_ctl: PATH first, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    def version(p: str) -> tuple[int, ...]:
        v = Path(p).parent.parent.name
        return tuple(int(x) for x in v.split(".") if x.isdigit())
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    return Path(dirs[-1]).parent if dirs else None


def _runner() -> list[str] | None:
    """The command prefix that runs a program as `USER` ([] when not root; None: no way)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", USER, "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={USER}", f"--regid={pwd.getpwnam(USER).pw_gid}",
                "--clear-groups", "--"]
    return None


def unavailable() -> str | None:
    """Why no server can be started here (None: one can)."""
    if bin_dir() is None:
        return ("PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get "
                "install postgresql (.ci/run does)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver is not installed: pip install -e '.[dev]' (psycopg[binary])"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"running as root and there is no user {USER!r} to run the server as"
        if _runner() is None:
            return "running as root and neither runuser nor setpriv is installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """``start()``, ``stop()`` (immediate: like a crash or a pulled plug), ``create_db(name)``
    -> its URL, ``close()`` (stops it and removes its folder)."""

    def __init__(self) -> None:
        bins = bin_dir()
        assert bins is not None
        self.bins = bins
        self.root = Path(tempfile.mkdtemp(prefix="medmtl-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        if os.geteuid() == 0:
            os.chown(self.root, pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid)
        self._run(["initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust", "--no-sync",
                   "-E", "UTF8", "--locale=C"])
        with (self.data / "postgresql.conf").open("a") as f:
            for k, v in {**_SETTINGS, "unix_socket_directories": f"'{self.root}'"}.items():
                f.write(f"{k} = {v}\n")
        self.start()

    def _run(self, args: list[str], timeout: float = 60) -> str:
        runner = _runner()
        assert runner is not None
        cmd = [*runner, str(self.bins / args[0]), *args[1:]]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           cwd=self.root, env={**os.environ, "LC_ALL": "C"})
        if p.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()} "
                               f"{p.stdout.strip()[-1000:]} {log}")
        return p.stdout

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server (on the same port every time) and wait until it takes connections."""
        if self.running():
            return
        for attempt in range(3):
            try:
                self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                           "-o", f"-p {self.port}", "start"])
                return
            except RuntimeError:
                if attempt == 2 or "could not bind" not in self.log.read_text():
                    raise
                self.port = free_port()  # taken since it was picked: another one

    def stop(self, mode: str = "immediate") -> None:
        if self.running():
            self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"])

    def url(self, db: str, password: str | None = None) -> str:
        auth = f"{DB_USER}:{password}" if password else DB_USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "postgres"):  # noqa: ANN201 - a psycopg connection
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=DB_USER, dbname=db,
                               connect_timeout=5, autocommit=True)

    def query(self, db: str, sql: str) -> list[tuple]:
        with self.connect(db) as conn:
            return list(conn.execute(sql).fetchall())

    def create_db(self, name: str) -> str:
        """A new, empty database; its URL."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")  # nothing in it is kept
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["PgServer", "bin_dir", "free_port", "unavailable"]
