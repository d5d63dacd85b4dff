"""Watching the embedded servers: one that exits is restarted at once, then with a growing
backoff; after `max_restarts` failed restarts in a row xbusd gives up (`on_give_up`: the
serve command then exits non-zero, for systemd or Kubernetes to restart the whole node).

The watchdog is a thread of the process that started the servers (the `xbusd serve`
process, which with several workers is their supervisor, not a worker). What it sees goes
to a small JSON status file that every worker reads for `/healthz`, `/readyz` and
`/metrics` (`read_status`): the workers are other processes.

The parent-death signal of a child fires when the *thread* that forked it exits: the
servers restarted here die with this thread, which lives as long as the runtime."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from app.runtime import children

log = logging.getLogger(__name__)

UP, RESTARTING, FAILED = "up", "restarting", "failed"
_POLL = 0.2
_BACKOFF_MAX = 10.0
# Up this long after a restart: the next exit starts a new series of restarts.
_STABLE_AFTER = 30.0


class Child(Protocol):
    """An embedded server: its process, its log, and how to start it again as it was."""

    process: subprocess.Popen[bytes] | None
    log_file: Path

    def restart(self) -> None: ...


def _pid(child: Child) -> int | None:
    return child.process.pid if child.process is not None else None


def _exited(child: Child) -> int | None:
    """The exit code of a server that exited (None while it runs, or before it started)."""
    return child.process.poll() if child.process is not None else None


@dataclass
class ServerStatus:
    state: str = UP
    pid: int | None = None
    restarts: int = 0  # successful restarts since xbusd started
    failed_in_a_row: int = 0
    down_since: float | None = None  # wall clock (time.time())
    last_exit: int | None = None
    last_error: str | None = None


class Watchdog:
    def __init__(
        self,
        status_file: Path,
        max_restarts: int,
        on_give_up: Callable[[str], None],
        backoff: float = 0.5,
    ) -> None:
        self.status_file = status_file
        self.max_restarts = max_restarts
        self.on_give_up = on_give_up
        self.backoff = backoff
        self.children: dict[str, Child] = {}
        self.servers: dict[str, ServerStatus] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._up_since: dict[str, float] = {}

    def watch(self, name: str, child: Child) -> None:
        self.children[name] = child
        self.servers[name] = ServerStatus(pid=_pid(child))
        self._up_since[name] = time.monotonic()

    def start(self) -> None:
        self._write()
        self._thread = threading.Thread(target=self._run, name="embedded-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the servers are stopped on purpose)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.status_file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.wait(_POLL):
            for name, child in self.children.items():
                code = _exited(child)
                if code is not None and not self._stop.is_set():
                    self._recover(name, child, code)

    def _recover(self, name: str, child: Child, code: int) -> None:
        status = self.servers[name]
        if time.monotonic() - self._up_since[name] > _STABLE_AFTER:
            status.failed_in_a_row = 0
        status.state, status.last_exit, status.down_since = RESTARTING, code, time.time()
        log.error(
            "the embedded %s exited (code %s); restarting it. The end of %s:\n%s",
            name,
            code,
            child.log_file,
            children.tail(child.log_file),
        )
        self._write()
        delay = self.backoff
        while not self._stop.is_set():
            try:
                child.restart()
            except Exception as exc:
                status.failed_in_a_row += 1
                status.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._write()
                if status.failed_in_a_row >= self.max_restarts:
                    status.state = FAILED
                    self._write()
                    reason = (
                        f"the embedded {name} could not be restarted "
                        f"({status.failed_in_a_row} attempts in a row): {status.last_error}"
                    )
                    log.error("%s; xbusd stops", reason)
                    self._stop.set()
                    self.on_give_up(reason)
                    return
                log.error(
                    "restarting the embedded %s failed (%d of %d): %s; next try in %.1f s",
                    name,
                    status.failed_in_a_row,
                    self.max_restarts,
                    exc,
                    delay,
                )
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            status.state, status.pid, status.down_since = UP, _pid(child), None
            status.restarts += 1
            self._up_since[name] = time.monotonic()
            log.warning(
                "the embedded %s is back (pid %s, restart %d)", name, status.pid, status.restarts
            )
            self._write()
            return

    def _write(self) -> None:
        body = {
            "pid": os.getpid(),
            "servers": {n: asdict(s) for n, s in self.servers.items()},
        }
        temporary = self.status_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(body))
        temporary.replace(self.status_file)


def read_status(path: Path | None) -> dict[str, dict[str, Any]]:
    """The embedded servers' status as the watchdog last wrote it ({} when there are none
    or the file cannot be read)."""
    if path is None:
        return {}
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    servers = body.get("servers") if isinstance(body, dict) else None
    return servers if isinstance(servers, dict) else {}
