"""Real `xbusd serve` processes on 127.0.0.1 against the test session's PostgreSQL (a scratch
database each) and nats-server, for tests of what only a real process shows: log output,
signals, several replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
import pytest

from app import migrations
from app.runtime.children import free_port
from tests.conftest import ADMIN_KEY, _plain, _recreate_database, _with_database, bound_port

XBUSD = str(Path(sys.executable).parent / "xbusd")
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("XBUS_")}


class Xbusd:
    """One `xbusd serve` on a free port of 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str,
        nats_url: str,
        env: dict[str, str] | None = None,
        stderr: int | IO[bytes] | None = None,
    ) -> None:
        self.data_dir = data_dir
        # Logging to its file, xbusd binds a port of its choosing (read from the log);
        # to `stderr`, one found free now.
        self.port: int | None = free_port() if stderr is not None else None
        self.log = data_dir.parent / f"xbusd-{data_dir.name}.log"
        self._log_start = 0
        self.env = {
            **_clean_env(),
            "XBUS_DATABASE_URL": database_url,
            "XBUS_NATS_URL": nats_url,
            "XBUS_ADMIN_API_KEY": ADMIN_KEY,
            "XBUS_WEBHOOK_ALLOW_PRIVATE": "true",
            "XBUS_DB_POOL_SIZE": "5",
            "XBUS_WORKERS": "1",
            **(env or {}),
        }
        self.stderr = stderr
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            assert self.proc is not None, "not started"
            self.port = bound_port(self.log, self.proc, self._log_start)
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Xbusd:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab") if self.stderr is None else self.stderr
        if self.stderr is None:
            self._log_start = self.log.stat().st_size
            self.port = None  # a port of its choosing again
        try:
            self.proc = subprocess.Popen(
                [XBUSD, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port or 0)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
                env=self.env,
            )
        finally:
            if self.stderr is None and not isinstance(out, int):
                out.close()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(not captured)"

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"xbusd exited early:\n{self.output()}"
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"xbusd not ready:\n{self.output()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        return code

    async def wait_async(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"xbusd still running after {timeout} s")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Cluster:
    """The xbusd processes of one test; all are killed at its end if still running."""

    def __init__(self, root: Path, database_url: str, nats_url: str) -> None:
        self.root = root
        self.database_url = database_url
        self.nats_url = nats_url
        self.servers: list[Xbusd] = []

    def server(self, name: str, **kwargs: Any) -> Xbusd:
        server = Xbusd(self.root / name, self.database_url, self.nats_url, **kwargs)
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.kill()


async def _drop_database(server_url: str, database: str) -> None:
    conn = await asyncpg.connect(_plain(_with_database(server_url, "postgres")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def scratch_database(pg_server_url: str) -> Iterator[str]:
    """A database of its own, migrated, dropped after the test."""
    name = f"xbus_scratch_{uuid.uuid4().hex[:10]}"
    asyncio.run(_recreate_database(pg_server_url, name))
    url = _with_database(pg_server_url, name)
    migrations.upgrade(url)
    try:
        yield url
    finally:
        asyncio.run(_drop_database(pg_server_url, name))


@pytest.fixture
def cluster(tmp_path: Path, scratch_database: str, nats_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, scratch_database, nats_url)
    try:
        yield c
    finally:
        c.close()
