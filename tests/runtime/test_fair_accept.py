"""The workers' least-loaded accept (`app.cli.fair_accept`): their shared account of their
connections (`Loads`) between real processes (a worker lets one that serves fewer take a
waiting connection, unless that one's event loop has stopped beating; a dead worker's slot
is taken again), and a worker's `Listener` (no watch left on the shared socket once closed;
WebSocket upgrades counted out)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
from typing import Any

import uvicorn

from app.cli.fair_accept import BEAT, STALE_MS, Listener, Loads, new_event_loop, share

SPAWN = multiprocessing.get_context("spawn")


def _worker(loads: Loads, connections: int, ready: Any, quiet: Any, stop: Any) -> None:
    """A worker serving `connections`, its loop beating until `quiet` (stuck), alive until
    `stop`."""
    loads.take()
    loads.serving(connections)
    ready.set()
    while not stop.is_set():
        if not quiet.is_set():
            loads.beat()
        time.sleep(BEAT / 2)


class _Other:
    def __init__(self, loads: Loads, connections: int) -> None:
        ready = SPAWN.Event()
        self.quiet, self.stop = SPAWN.Event(), SPAWN.Event()
        self.process = SPAWN.Process(
            target=_worker, args=(loads, connections, ready, self.quiet, self.stop)
        )
        self.process.start()
        assert ready.wait(60)

    def end(self) -> None:
        self.stop.set()
        self.process.join(30)


def test_a_worker_defers_to_a_live_beating_worker_that_serves_fewer() -> None:
    loads = Loads(2)
    other = _Other(loads, 2)
    try:
        loads.take()
        loads.beat()
        assert loads.defer(3)
        assert not loads.defer(2)  # as many: whoever is first
        assert not loads.defer(1)
        time.sleep(STALE_MS / 1000 + 0.2)
        assert loads.defer(3)  # still beating
        # Its loop stuck (a long computation), the process alive: once its last beat is
        # stale it is not waited for.
        other.quiet.set()
        time.sleep(STALE_MS / 1000 + 0.2)
        assert not loads.defer(3)
    finally:
        other.end()
    loads.free()


def test_the_slot_of_a_dead_worker_is_taken_again() -> None:
    loads = Loads(2)
    dead = _Other(loads, 0)
    dead.end()
    live = _Other(loads, 0)
    try:
        # Two slots: this process has one only if one of the live worker and this process
        # took the dead worker's.
        loads.take()
        assert loads.defer(1)
        loads.free()
        assert not loads.defer(1)  # without a slot, a worker takes what comes
    finally:
        live.end()


async def _listener_and_shared_socket() -> tuple[Any, socket.socket, int]:
    """A Listener (the workers' loop's `create_server`) on a socket that another descriptor
    keeps open, as the supervisor and the other workers keep theirs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    other = os.dup(sock.fileno())
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, sock=sock)
    assert isinstance(server, Listener)
    await asyncio.sleep(0.05)  # watching the socket
    return server, sock, other


def test_a_closed_listener_leaves_no_watch_on_the_shared_socket() -> None:
    """uvicorn closes its socket right after the server: a watch left on it would wake the
    worker at every connection waiting for the others (its loop spinning while it drains)."""

    async def check() -> float:
        server, sock, other = await _listener_and_shared_socket()
        try:
            server.close()
            sock.close()  # uvicorn's shutdown order
            await server.wait_closed()
            port = socket.socket(fileno=os.dup(other)).getsockname()[1]
            with socket.create_connection(("127.0.0.1", port)):  # waits in the shared queue
                started = time.process_time()
                await asyncio.sleep(0.3)
                return time.process_time() - started
        finally:
            os.close(other)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert runner.run(check()) < 0.1  # spinning, it was 0.3 s of CPU in 0.3 s


def test_connections_upgraded_to_websockets_are_counted_out() -> None:
    """A connection upgraded to a WebSocket changes protocols: counted by its transport, it
    is counted out when it closes (a connection that was not would make the other workers
    wait for this one forever)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "websocket":  # refused (403) at its handshake
            await receive()
            await send({"type": "websocket.close", "code": 1000})

    def get(port: int, upgrade: bool) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            head = b"GET / HTTP/1.1\r\nhost: xbus\r\n"
            if upgrade:
                head += (
                    b"upgrade: websocket\r\nconnection: upgrade\r\n"
                    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
                )
            conn.sendall(head + b"\r\n")
            return conn.recv(100)

    async def check() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_level="warning")
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        [listener] = server.servers
        assert isinstance(listener, Listener)
        loop = asyncio.get_running_loop()
        answers = [await loop.run_in_executor(None, get, port, up) for up in (False, True, True)]
        assert [a[:12] for a in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 403", b"HTTP/1.1 403"]
        await asyncio.sleep(0.2)
        assert not server.server_state.connections
        serving = listener._serving()
        server.should_exit = True
        await server.shutdown(sockets=[sock])
        return serving

    share(Loads(2))
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            assert runner.run(check()) == 0
    finally:
        share(None)
