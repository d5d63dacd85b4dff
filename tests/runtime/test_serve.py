"""`xbusd serve` as a user runs it: embedded PostgreSQL and nats-server, restart with data
kept, SIGTERM leaves nothing behind, `kill -9` then restart cleans up and keeps the data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.runtime.children import free_port
from tests.conftest import bound_port

pytestmark = pytest.mark.timeout(180)

XBUSD = str(Path(sys.executable).parent / "xbusd")
# /readyz of `xbusd serve` on the embedded default, all well.
READY_CHECKS = {
    "database": "ok",
    "migrations": "ok",
    "nats": "ok",
    "embedded postgres": "ok",
    "embedded nats-server": "ok",
}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("XBUS_")}


class Server:
    """`xbusd serve` on the port it binds (`--port 0`, read from its log at each start) or
    on `port`."""

    def __init__(self, data_dir: Path, *args: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.fixed = port
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"xbusd-{data_dir.name}.log"

    @property
    def url(self) -> str:
        assert self.port is not None, "not started"
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60, env: dict[str, str] | None = None) -> None:
        # One process unless the test asks for workers (--workers wins over the variable).
        env = {**_clean_env(), "XBUS_NATS_PORT": "0", "XBUS_WORKERS": "1", **(env or {})}
        with self.log.open("ab") as out:
            start = out.tell()
            self.proc = subprocess.Popen(
                [
                    XBUSD,
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.fixed or 0),
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if self.fixed is None:
            self.port = bound_port(self.log, self.proc, start, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("xbusd not ready:\n" + self.log.read_text())

    def children(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def whoami(self) -> dict[str, object]:
        r = httpx.get(
            self.url + "/api/v1/whoami", headers={"Authorization": f"Bearer {self.admin_key()}"}
        )
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    def close(self) -> None:
        """After a test: the server and any embedded server it left, killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for leftover in _servers_using(self.data_dir):
            leftover.kill()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code


def _gone(procs: list[psutil.Process], timeout: float = 15) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return not alive


def _servers_using(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmd and proc.info["name"] in ("postgres", "nats-server"):
            found.append(proc)
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    yield srv
    srv.close()


def test_start_stop_restart_keeps_data(server: Server) -> None:
    started = time.monotonic()
    server.start()
    startup = time.monotonic() - started
    first = server.whoami()
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["checks"] == READY_CHECKS
    # The serving process settled its heap once started (app.heap).
    assert server.log.read_text().count("heap settled: ") == 1
    children = server.children()
    names = {p.name() for p in children}
    assert {"postgres", "nats-server"} <= names, names
    assert (server.data_dir / "postgres" / "PG_VERSION").exists()
    assert (server.data_dir / "nats" / "jetstream").exists()

    assert server.stop(signal.SIGTERM) == 0
    assert _gone(children), [p for p in children if p.is_running()]
    assert not (server.data_dir / "xbusd.pid").exists()

    server.start()
    assert server.whoami() == first  # same admin account, same key: data kept
    server.stop(signal.SIGINT)
    assert not _servers_using(server.data_dir)
    print(f"first start (initdb included): {startup:.1f} s")


def test_kill_9_then_restart_cleans_up(server: Server) -> None:
    server.start()
    first = server.whoami()
    children = server.children()
    server.stop(signal.SIGKILL)
    # The parent-death signal stops the embedded servers even after kill -9.
    assert _gone(children, 30), [p.name() for p in children if p.is_running()]
    assert (server.data_dir / "xbusd.pid").exists()  # stale lock file left behind

    # Make it worse: stale pid files naming processes that are not ours.
    (server.data_dir / "postgres" / "postmaster.pid").write_text(
        f"{os.getpid()}\n{server.data_dir}\n"
    )
    (server.data_dir / "nats" / "nats-server.pid").write_text(f"{os.getpid()}")

    server.start()
    assert server.whoami() == first
    assert server.stop() == 0
    assert not _servers_using(server.data_dir)


def test_second_xbusd_on_same_data_dir_refused(server: Server, tmp_path: Path) -> None:
    server.start()
    other = subprocess.run(
        [XBUSD, "serve", "--data-dir", str(server.data_dir), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), "XBUS_NATS_PORT": "0"},
    )
    assert other.returncode == 1
    assert "another xbusd" in other.stderr
    assert server.whoami()["admin"] is True


def test_http_port_taken_fails_before_anything_starts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = subprocess.run(
            [XBUSD, "serve", "--data-dir", str(data_dir), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**_clean_env(), "XBUS_NATS_PORT": "0", "XBUS_WORKERS": "1"},
        )
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    # Refused before the embedded servers: nothing initialised, nothing left running.
    assert not (data_dir / "postgres").exists()
    assert not _servers_using(data_dir)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_embedded_nats_never_takes_the_http_port(tmp_path: Path, workers: str) -> None:
    """The HTTP socket is bound before the embedded nats-server chooses its port (uvicorn
    binds only after the application's start-up): asked for the same port, nats-server
    moves to another, and the bus serves (CI once saw nats-server's free port be the one
    chosen for HTTP, and xbusd exit at its bind)."""
    server = Server(tmp_path / "data", port=free_port())
    try:
        server.start(env={"XBUS_NATS_PORT": str(server.port), "XBUS_WORKERS": workers})
        assert httpx.get(server.url + "/readyz").json()["checks"] == READY_CHECKS
        assert f"NATS port {server.port} is taken" in server.log.read_text()
        assert server.stop() == 0
    finally:
        server.close()


def test_version_flags() -> None:
    out = subprocess.run([XBUSD, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("xbusd ")
    full = subprocess.run([XBUSD, "--full-version"], capture_output=True, text=True, check=True)
    assert '"commit"' in full.stdout
    assert '"protocol": "3.0"' in full.stdout


def test_migrate_command(tmp_path: Path) -> None:
    env = _clean_env()
    out = subprocess.run(
        [XBUSD, "migrate", "--data-dir", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stderr
    assert not _servers_using(tmp_path / "m")


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_setting: 1\n")
    out = subprocess.run(
        [XBUSD, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "unknown settings no_such_setting" in out.stderr
