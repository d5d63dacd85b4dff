"""`xbusd serve` on its embedded servers, each killed (SIGKILL) under load: the watchdog
restarts it, xbusd's own connections come back, /readyz says which server is down while it
is, the restart is counted and logged with the end of the server's log, and every envelope
answered 202 ends done. One that cannot come back makes xbusd fail /healthz, then exit
non-zero."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bus.conftest import ENVELOPE
from tests.replicas.test_replicas import Api
from tests.runtime.test_serve import Server, _servers_using

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    yield srv
    srv.close()


def _pid(server: Server, name: str) -> int:
    if name == "nats-server":
        path = server.data_dir / "nats" / "nats-server.pid"
    else:
        path = server.data_dir / "postgres" / "postmaster.pid"
    return int(path.read_text().split()[0])


async def _metric(client: httpx.AsyncClient, line_start: str) -> float | None:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _back(client: httpx.AsyncClient, name: str, restarts: int, seen: list[str]) -> None:
    """Until the watchdog has restarted `name` that many times and the bus is ready."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            ready = await client.get("/readyz")
            check = ready.json()["checks"].get(f"embedded {name}", "")
            if check != "ok":
                seen.append(check)
            counted = await _metric(
                client, f'xbus_embedded_server_restarts_total{{server="{name}"}}'
            )
            if ready.status_code == 200 and counted == restarts:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the embedded {name} did not come back ({seen[-3:]})")


async def test_killed_embedded_servers_come_back_under_load(watched: Server) -> None:
    # A lease handed out as the database died (its answer lost) comes back soon.
    watched.start(env={"XBUS_REQUEST_LEASE": "3"})
    async with httpx.AsyncClient(
        base_url=watched.url, headers={"Authorization": f"Bearer {watched.admin_key()}"}, timeout=30
    ) as admin:
        key, names = await Api(admin).setup(worker=False)
        async with httpx.AsyncClient(
            base_url=watched.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as actor:
            accepted: set[str] = set()
            codes: Counter[int] = Counter()
            stop = asyncio.Event()

            async def emitter() -> None:
                while not stop.is_set():
                    try:
                        r = await actor.post(
                            f"/api/v1/actors/{names['emitter']}/output", json=ENVELOPE
                        )
                    except httpx.HTTPError:
                        codes[0] += 1  # (a connection cut by the restart)
                        continue
                    codes[r.status_code] += 1
                    assert r.status_code in (202, 503), r.text
                    if r.status_code == 202:
                        accepted.add(r.json()["process_id"])
                    await asyncio.sleep(0.02)

            async def consumer() -> None:
                while not stop.is_set():
                    await consume()

            async def consume() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    r = await actor.get(
                        f"/api/v1/actors/{names['consumer']}/requests",
                        params={"max": 50, "wait": 0.5},
                    )
                    if r.status_code != 200:
                        await asyncio.sleep(0.1)
                        return
                    for request in r.json()["requests"]:
                        answer = await actor.post(
                            f"/api/v1/requests/{request['request_id']}/state",
                            json={"status": "success"},
                        )
                        assert answer.status_code in (200, 409, 503), answer.text

            tasks = [asyncio.create_task(emitter()) for _ in range(2)]
            tasks.append(asyncio.create_task(consumer()))
            seen: dict[str, list[str]] = {"nats-server": [], "postgres": []}
            try:
                for name in ("nats-server", "postgres"):
                    before = len(accepted)
                    os.kill(_pid(watched, name), signal.SIGKILL)
                    await _back(admin, name, 1, seen[name])
                    deadline = time.monotonic() + 30
                    while len(accepted) < before + 20:  # emissions go on after it
                        assert time.monotonic() < deadline, codes
                        await asyncio.sleep(0.1)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)

            # Every 202 ends done (a request whose lease or answer was lost to the restart is
            # handed out again once its lease runs out).
            deadline = time.monotonic() + 90
            missing = set(accepted)
            while missing:
                await consume()
                for process_id in list(missing):
                    body = (await admin.get(f"/api/v1/processes/{process_id}")).json()
                    if body["status"] == "done":
                        missing.discard(process_id)
                    else:
                        assert body["status"] == "running", body
                assert time.monotonic() < deadline, f"{len(missing)} not done"
                if missing:
                    await asyncio.sleep(0.5)

    # The log says what happened, with the end of the server's own log.
    log = watched.log.read_text()
    assert "the embedded nats-server exited (code -9); restarting it" in log
    assert "the embedded postgres exited (code -9); restarting it" in log
    assert "the embedded postgres is back" in log
    assert codes[202] == len(accepted)
    assert watched.stop() == 0


def _hold_port(port: int) -> socket.socket:
    """Listen on `port` as soon as it is free (the killed server's socket closes with it)."""
    deadline = time.monotonic() + 5
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def test_a_server_that_cannot_come_back_stops_xbusd(watched: Server, tmp_path: Path) -> None:
    watched.start(env={"XBUS_EMBEDDED_RESTART_MAX": "4", "XBUS_EMBEDDED_DOWN_GRACE": "0.5"})
    config = (watched.data_dir / "nats" / "nats-server.conf").read_text()
    port = int(next(line for line in config.splitlines() if line.startswith("port:")).split()[1])
    os.kill(_pid(watched, "nats-server"), signal.SIGKILL)
    holder = _hold_port(port)  # every restart finds its port taken
    try:
        deadline = time.monotonic() + 20
        health: Any = None
        while time.monotonic() < deadline:
            health = httpx.get(watched.url + "/healthz", timeout=2)
            if health.status_code == 503:
                break
            time.sleep(0.1)
        assert health is not None
        assert health.status_code == 503, health.text
        assert "the embedded nats-server is down" in health.json()["status"]
        ready = httpx.get(watched.url + "/readyz", timeout=2)
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["embedded nats-server"].startswith("restarting, down for"), checks
        assert checks["embedded postgres"] == "ok"
        assert watched.proc is not None
        assert watched.proc.wait(60) == 3
    finally:
        holder.close()
    log = watched.log.read_text()
    assert "restarting the embedded nats-server failed (1 of 4)" in log
    assert "could not be restarted (4 attempts in a row)" in log
    assert not _servers_using(watched.data_dir)  # PostgreSQL stopped cleanly with it
