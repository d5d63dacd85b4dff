"""Workers that share a listening socket take its connections least-loaded first.

uvloop (libuv), like asyncio, accepts every connection waiting on a listening socket at
each wake-up. The workers of `xbusd serve --workers N` share one socket: when a client
opens several connections at once (a connection pool, a load generator's clients), the
worker that wakes first takes them all, and the others stay idle for as long as those
connections live (`bench.http_bus`: its 20 connections on one worker of two, run after run).

Here each worker's event loop serves the shared socket with a `Listener`, which counts the
connections its worker serves in a small array that all the workers share (`Loads`). When a
connection waits, a worker that serves more than another live worker lets that one take it
first: it tries only after `DEFER` (the other's wake-up took up to a millisecond on a busy
2-core machine). Workers that serve as many take it at once, whoever is first: clients that
open a connection for each request are not slowed. The connections still wait in the one
queue of the shared socket: a worker that stops or dies leaves them to the others
(per-worker `SO_REUSEPORT` sockets would split them by a hash of the addresses instead, and
drop what waits in a closed worker's queue). A worker whose event loop stops beating
(stopped, stuck in a long computation) is waited for during `STALE_MS`, then no more.

The workers' event loop (uvicorn's `Config(loop=...)`, `new_event_loop`) is uvloop's, or
asyncio's without uvloop, with `FairAccept`: its `create_server` for a given plain socket
(what uvicorn asks of a worker) returns a `Listener`; anything else is the loop's own."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# How long a worker that serves more connections than another leaves a waiting connection
# to the other before it takes it itself.
DEFER = 0.005
# A worker whose event loop beats every BEAT seconds; one silent for STALE_MS is not waited for.
BEAT = 0.1
STALE_MS = 500
# What accept(2) fails with when the connection was reset before it was taken.
_RETRY_AT_ONCE = {errno.ECONNABORTED, errno.EPROTO, errno.EINTR}
_RETRY_DELAY = 1.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone (or the pid is another user's now)
        return False
    return True


def _now_ms() -> int:
    # CLOCK_MONOTONIC: one clock for every process of the machine.
    return int(time.monotonic() * 1000)


class Loads:
    """How many connections each worker serves, in memory shared by the supervisor's
    workers: a slot per worker (its pid, its connections, when its event loop last beat).
    Made by the supervisor, it travels to each worker with uvicorn's configuration; a worker
    takes a free slot (or a dead worker's) when it starts serving and frees it when it
    stops. A worker whose loop has not beaten for `STALE_MS` (stopped, hung in a long
    computation) is not waited for."""

    _FIELDS = 3  # pid, connections, beat (ms)

    def __init__(self, slots: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.slots = slots
        self._cells = context.RawArray(ctypes.c_int64, self._FIELDS * slots)
        self._lock = context.Lock()
        self._mine: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mine": None}

    def take(self) -> None:
        """This worker's slot, with no connection."""
        me = os.getpid()
        with self._lock:
            for slot in range(self.slots):
                at = self._FIELDS * slot
                pid = self._cells[at]
                if pid == 0 or pid == me or not _alive(pid):
                    self._cells[at : at + self._FIELDS] = [me, 0, _now_ms()]
                    self._mine = at
                    return
        log.warning("no slot left among %d for worker %d: it accepts as it comes", self.slots, me)

    def free(self) -> None:
        if self._mine is not None:
            with self._lock:
                self._cells[self._mine] = 0
            self._mine = None

    def beat(self) -> None:
        if self._mine is not None:
            self._cells[self._mine + 2] = _now_ms()

    def serving(self, connections: int) -> None:
        if self._mine is not None:
            self._cells[self._mine + 1] = connections

    def defer(self, connections: int) -> bool:
        """Whether another worker, beating, serves fewer connections than `connections`."""
        if self._mine is None:
            return False
        fresh = _now_ms() - STALE_MS
        cells = self._cells
        for at in range(0, self._FIELDS * self.slots, self._FIELDS):
            if (
                at != self._mine
                and cells[at]
                and cells[at + 1] < connections
                and cells[at + 2] >= fresh
            ):
                return True
        return False


_loads: Loads | None = None


def share(loads: Loads) -> None:
    """In a worker, before its server starts: the loads its listener publishes and reads."""
    global _loads
    _loads = loads


class Listener:
    """Takes the connections of a listening socket, least-loaded worker first; what uvicorn
    keeps of a server (`close`, `wait_closed`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.Protocol],
        sock: socket.socket,
        backlog: int,
        loads: Loads | None,
    ) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._sock = sock
        self._tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._loads = loads
        self._connections = 0  # accepted and not yet lost
        self._serving: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        sock.listen(backlog)
        self._beating: asyncio.TimerHandle | None = None
        if loads is not None:
            loads.take()
            self._beat()
        self._accepting = loop.create_task(self._accept(), name="accept")
        self._accepting.add_done_callback(self._stopped)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def is_serving(self) -> bool:
        return not self._accepting.done()

    def close(self) -> None:
        """Stop taking connections (the socket is its owner's to close); those accepted
        are their protocols'."""
        self._accepting.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """No more accepting (closed, or failed): the other workers no longer wait for this
        one."""
        if self._beating is not None:
            self._beating.cancel()
        if self._loads is not None:
            self._loads.free()
        if not task.cancelled() and task.exception() is not None:
            log.error("this worker stopped accepting connections", exc_info=task.exception())

    def _beat(self) -> None:
        assert self._loads is not None
        self._loads.beat()
        self._beating = self._loop.call_later(BEAT, self._beat)

    def _count(self, change: int) -> None:
        self._connections += change
        if self._loads is not None:
            self._loads.serving(self._connections)

    async def _accept(self) -> None:
        while True:
            await self._connection_waits()
            if self._loads is not None and self._loads.defer(self._connections):
                await asyncio.sleep(DEFER)
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                continue  # another worker took it
            except OSError as exc:
                if exc.errno in _RETRY_AT_ONCE:
                    continue
                # Out of descriptors or memory for a moment, or what should not happen:
                # said, and tried again (asyncio's own accept waits 1 s too).
                log.error("cannot accept a connection (%s); again in %g s", exc, _RETRY_DELAY)
                await asyncio.sleep(_RETRY_DELAY)
                continue
            self._count(+1)
            task = self._loop.create_task(self._serve(conn))
            self._serving.add(task)  # held until done (the loop holds tasks weakly)
            task.add_done_callback(self._serving.discard)

    async def _connection_waits(self) -> None:
        """Returns once the socket has a connection waiting (in every worker it wakes)."""
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = self._sock.fileno()
        self._loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_reader(fd)

    async def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if self._tcp:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._loop.connect_accepted_socket(self._protocol, conn)
        except Exception:
            log.exception("cannot serve an accepted connection")
            conn.close()
            self._count(-1)

    def _protocol(self) -> asyncio.Protocol:
        """The server's protocol, counted out when its connection is lost."""
        protocol = self._factory()
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self._count(-1)
            lost(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol


class FairAccept:
    """An event loop mixin: `create_server(sock=...)` of a plain socket is a `Listener`."""

    async def create_server(  # type: ignore[no-untyped-def]
        self, protocol_factory, host=None, port=None, *, sock=None, ssl=None, **kwargs
    ):
        backlog = kwargs.pop("backlog", 100)
        if sock is None or ssl is not None or host is not None or port is not None or kwargs:
            return await super().create_server(  # type: ignore[misc]
                protocol_factory, host, port, sock=sock, ssl=ssl, backlog=backlog, **kwargs
            )
        return Listener(self, protocol_factory, sock, backlog, _loads)  # type: ignore[arg-type]


try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
    _Loop: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop
else:
    _Loop = uvloop.Loop


class FairLoop(FairAccept, _Loop):  # type: ignore[valid-type,misc]
    pass


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvicorn's `loop` setting in the workers (`"app.cli.fair_accept:new_event_loop"`)."""
    return FairLoop()
