"""Workers that share a listening socket take its connections least-loaded first.

uvloop (libuv), like asyncio, accepts every connection waiting on a listening socket at
each wake-up. The workers of `xbusd serve --workers N` share one socket: when a client
opens several connections at once (a connection pool, a load generator's clients), the
worker that wakes first takes them all, and the others stay idle for as long as those
connections live (`bench.http_bus`: its 20 connections on one worker of two, run after run).

Here each worker's event loop serves the shared socket with a `Listener`, which counts the
connections its worker serves in a small array that all the workers share (`Loads`). When
connections wait, a worker takes them at once unless another live worker serves fewer: it
then leaves that one `DEFER` to take the next first (the other's wake-up took up to a
millisecond on a busy 2-core machine). Workers that serve as many take what comes, whoever
is first; a connection waits at most `DEFER` more than before, when the worker that serves
fewer is busy. The connections still wait in the one queue of the shared socket: a worker
that stops or dies leaves them to the others (per-worker `SO_REUSEPORT` sockets would split
them by a hash of the addresses instead, and drop what waits in a closed worker's queue). A
worker whose event loop stops beating (stopped, stuck in a long computation) is waited for
during `STALE_MS` at most, then no more.

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
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

# How long a worker that serves more connections than another leaves a waiting connection
# to the other before it takes it itself.
DEFER = 0.005
# A worker whose event loop beats every BEAT seconds; one silent for STALE_MS is not waited for.
BEAT = 0.1
STALE_MS = 500
# What accept(2) fails with when the connection went wrong before it was taken (on Linux,
# the pending network errors too: accept(2) says to retry at once).
_RETRY_AT_ONCE = {
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EINTR",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
}
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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A worker killed while it held the lock (a moment's window) must not block the
        # others for good: past a second, go on without it.
        got = self._lock.acquire(timeout=1.0)
        try:
            yield
        finally:
            if got:
                self._lock.release()

    def take(self) -> None:
        """This worker's slot, with no connection."""
        me = os.getpid()
        with self._locked():
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
            with self._locked():
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


def share(loads: Loads | None) -> None:
    """In a worker, before its server starts: the loads its listener publishes and reads."""
    global _loads
    _loads = loads


class Listener:
    """Takes the connections of a listening socket, least-loaded worker first; what uvicorn
    keeps of a server (`close`, `wait_closed`). It listens on a duplicate of the socket of
    its own: uvicorn closes the socket it gave right after `close`, and an epoll watch of
    a descriptor closed while other processes hold the same socket outlives it (a loop
    woken at every waiting connection, for nothing)."""

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
        sock.setblocking(False)
        sock.listen(backlog)
        self._sock = sock.dup()
        self._loads = loads
        # The connections served: their transports once set up, the set-ups under way.
        self._transports: set[asyncio.BaseTransport] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._watching = False  # a reader is on the socket
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
        """Stop taking connections; those accepted are their protocols'."""
        self._unwatch()  # now, before uvicorn closes its socket
        self._accepting.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):  # `_stopped` said it
            await self._accepting

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """No more accepting: the other workers no longer wait for this one. Failed, this
        worker could only answer the connections it has: it stops (gracefully, as on
        SIGTERM), and the supervisor starts another."""
        self._unwatch()
        self._sock.close()
        if self._beating is not None:
            self._beating.cancel()
        if self._loads is not None:
            self._loads.free()
        if not task.cancelled() and task.exception() is not None:
            log.critical(
                "this worker stopped accepting connections: it stops",
                exc_info=task.exception(),
            )
            os.kill(os.getpid(), signal.SIGTERM)

    def _serving(self) -> int:
        self._transports = {t for t in self._transports if not t.is_closing()}
        return len(self._transports) + len(self._starting)

    def _beat(self) -> None:
        """Every BEAT: this worker's loop runs, and serves this many connections (counted
        from the transports: a connection upgraded to a WebSocket changes protocols, not
        transports)."""
        assert self._loads is not None
        self._loads.beat()
        self._loads.serving(self._serving())
        self._beating = self._loop.call_later(BEAT, self._beat)

    async def _accept(self) -> None:
        while True:
            await self._connection_waits()
            # What waits is taken at once, unless another worker serves fewer: that one gets
            # DEFER to take the next connection first.
            while True:
                if self._loads is not None and self._loads.defer(self._serving()):
                    await asyncio.sleep(DEFER)
                try:
                    conn, _ = self._sock.accept()
                except BlockingIOError:
                    break  # none left (another worker took it)
                except OSError as exc:
                    if exc.errno in _RETRY_AT_ONCE:
                        continue
                    # Out of descriptors or memory for a moment, or what should not happen:
                    # said, and tried again (asyncio's own accept waits 1 s too).
                    log.error("cannot accept a connection (%s); again in %g s", exc, _RETRY_DELAY)
                    await asyncio.sleep(_RETRY_DELAY)
                    break
                task = self._loop.create_task(self._start(conn))
                self._starting.add(task)
                task.add_done_callback(self._starting.discard)
                if self._loads is not None:
                    self._loads.serving(self._serving())

    async def _connection_waits(self) -> None:
        """Returns once the socket has a connection waiting (in every worker it wakes)."""
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(self._sock.fileno(), wake)
        self._watching = True
        try:
            await ready
        finally:
            self._unwatch()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._sock.fileno())

    async def _start(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            transport, _ = await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception:
            log.exception("cannot serve an accepted connection")
            conn.close()
            return
        self._transports.add(transport)


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
