"""A real HTTP receiver on 127.0.0.1 (uvicorn in this event loop) that records every webhook
and answers as each test scripts it, plus helpers to wire webhook actors through the API."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from tests.bus.conftest import ENVELOPE, Account, Bus, bus, chain

__all__ = ["bus"]  # the bus tests' fixture, used here too

FAST = {
    "webhook_poll_interval": 0.05,
    "webhook_lease_margin": 1.0,
    "webhook_probe_interval": 0.5,
    "webhook_shutdown_grace": 0.2,
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(FAST)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.perf_counter() when the request arrived


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (until the receiver stops)
    delay: float = 0.0


Script = Callable[[Received], Reply | Awaitable[Reply]]


class Receiver:
    """Records requests by path; `script(path, ...)` sets the answers of a path: a list of
    replies used in turn (the last one repeats), or a function of the request."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, Script | list[Reply]] = {}
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.release = asyncio.Event()
        self._arrived = asyncio.Condition()
        self.base_url = ""

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def script(self, path: str, answer: Script | list[Reply] | Reply) -> None:
        self.scripts[path] = [answer] if isinstance(answer, Reply) else answer

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, path: str, count: int = 1, timeout: float = 10) -> list[Received]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.at(path)) >= count)
        return self.at(path)

    async def _reply(self, got: Received) -> Reply:
        script = self.scripts.get(got.path, [Reply()])
        if isinstance(script, list):
            index = min(len(self.at(got.path)) - 1, len(script) - 1)
            return script[index]
        answer = script(got)
        return await answer if asyncio.iscoroutine(answer) else answer  # type: ignore[return-value]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        got = Received(
            scope["path"],
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            b"".join(chunks),
            time.perf_counter(),
        )
        path = got.path
        async with self._arrived:
            self.received.append(got)
            self._arrived.notify_all()
        self.in_flight[path] = self.in_flight.get(path, 0) + 1
        self.peak[path] = max(self.peak.get(path, 0), self.in_flight[path])
        try:
            reply = await self._reply(got)
            if reply.hang:
                await self.release.wait()
                return
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self.in_flight[path] -= 1
        headers = [(k.encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a free 127.0.0.1 port; yields its base URL."""
    sock = free_socket()
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        sock.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    async with serve(recv) as base_url:
        recv.base_url = base_url
        try:
            yield recv
        finally:
            recv.release.set()


async def webhook_chain(
    bus: Bus, acct: Account, url: str, kind: str = "consumer", **config: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An emitter and one webhook actor (consumer by default) in an active pipeline."""
    em = await bus.actor(acct, "emitter")
    entries = {"http.webhook.url": url}
    entries.update({f"http.webhook.{k.replace('_', '-')}": v for k, v in config.items()})
    target = await bus.actor(acct, kind, config=entries)
    await bus.pipeline(chain(em["name"], (kind, target["name"])))
    return em, target


async def emit(
    acct: Account, emitter: str, envelope: dict[str, Any] | None = None
) -> dict[str, Any]:
    r = await acct.http.post(f"/api/v1/actors/{emitter}/output", json=envelope or ENVELOPE)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


async def finished(
    client: httpx.AsyncClient, process_id: str, timeout: float = 15, unavailable: int = 0
) -> dict[str, Any]:
    """The process once ended (waiting up to `timeout`); `unavailable`: how many 503s (with
    their Retry-After) to take and ask again after."""
    for _ in range(unavailable + 1):
        r = await client.get(f"/api/v1/processes/{process_id}", params={"wait": timeout})
        if r.status_code != 503:
            break
        assert r.headers["retry-after"], r.headers
    assert r.status_code == 200, r.text
    process: dict[str, Any] = r.json()
    assert process["status"] in ("done", "error"), process
    return process


async def logs(client: httpx.AsyncClient, process_id: str) -> list[str]:
    r = await client.get(f"/api/v1/processes/{process_id}/logs")
    assert r.status_code == 200, r.text
    return [entry["text"] for entry in r.json()["items"]]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
