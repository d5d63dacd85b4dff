"""The outbound HTTP/1.1 client of webhook delivery: one small keep-alive pool per actor.

Why not httpx: measured on the 2-core machine against a local uvicorn receiver (docs/
webhooks.md), httpx costs ~0.8 ms of CPU per POST (one client per actor, 4 connections; a
shared client with 32 connections is 3x worse), while this client, h11's state machine on
asyncio streams, costs ~0.1 ms. h11 does the HTTP framing (chunked or sized bodies,
keep-alive rules, protocol errors); this module only pools connections and caps sizes.

What it does not do, on purpose: follow redirects (a 3xx is an answer), use proxies or
environment settings, HTTP/2, or request compression. The caller bounds an attempt's time
with `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

READ_CHUNK = 65536
# Servers close idle keep-alive connections (uvicorn after 5 s): reuse only fresher ones.
IDLE_REUSE = 4.0


class HttpError(Exception):
    """The exchange failed before a whole response arrived (connect, send, read, framing)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # names in lower case
    body: bytes
    truncated: bool  # the body was longer than the limit; `body` holds its start

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's requests go: scheme, host and port to connect to, the Host header and
    the request target (path and query)."""

    scheme: str
    host: str
    port: int
    authority: str
    path: str

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(scheme, host, port, parts.netloc, path)

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0

    def reusable(self, now: float) -> bool:
        return (
            now - self.idle_since < IDLE_REUSE
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class ConnectionPool:
    """Keep-alive connections to one origin, at most `size` at once (extra requests wait)."""

    def __init__(self, origin: tuple[str, str, int], size: int) -> None:
        self.origin = origin
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []
        self.last_used = time.monotonic()

    async def _connect(self) -> _Connection:
        scheme, host, port = self.origin
        if scheme == "https":
            reader, writer = await asyncio.open_connection(
                host, port, ssl=_tls_context(), server_hostname=host
            )
        else:
            reader, writer = await asyncio.open_connection(host, port)
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable(now):
                return conn
            conn.close()
        return None

    async def post(
        self, target: Target, headers: list[tuple[str, str]], body: bytes, max_body: int
    ) -> HttpResponse:
        """POST `body`; a failure on a reused connection before any byte of the answer came
        back (the server closed it meanwhile) is tried once more on a new connection."""
        async with self._slots:
            self.last_used = time.monotonic()
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, target, headers, body, max_body)
                except _Stale:
                    pass
            try:
                conn = await self._connect()
            except OSError as exc:
                raise HttpError(f"cannot connect: {_describe(exc)}") from None
            try:
                return await self._exchange(conn, target, headers, body, max_body)
            except _Stale as exc:
                raise HttpError(str(exc)) from None

    async def _exchange(
        self,
        conn: _Connection,
        target: Target,
        headers: list[tuple[str, str]],
        body: bytes,
        max_body: int,
    ) -> HttpResponse:
        answered = False
        keep = False
        try:
            protocol = conn.protocol
            request = h11.Request(
                method="POST",
                target=target.path,
                headers=[
                    ("host", target.authority),
                    *headers,
                    ("content-length", str(len(body))),
                ],
            )
            out = protocol.send(request) or b""
            out += protocol.send(h11.Data(data=body)) or b""
            out += protocol.send(h11.EndOfMessage()) or b""
            conn.writer.write(out)
            await conn.writer.drain()
            status, reason, response_headers = 0, "", []
            chunks: list[bytes] = []
            size = 0
            truncated = False
            while True:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    data = await conn.reader.read(READ_CHUNK)
                    if data:
                        answered = True
                    protocol.receive_data(data)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    status, reason = event.status_code, event.reason.decode("latin-1")
                    response_headers = [
                        (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
                    ]
                elif isinstance(event, h11.Data):
                    room = max_body - size
                    chunks.append(bytes(event.data[:room]))
                    size += min(len(event.data), room)
                    if len(event.data) > room:
                        truncated = True
                        break
                elif isinstance(event, h11.EndOfMessage):
                    keep = protocol.our_state is h11.DONE and protocol.their_state is h11.DONE
                    break
                else:  # ConnectionClosed before the end of the answer
                    raise HttpError("the server closed the connection before answering")
            return HttpResponse(status, reason, response_headers, b"".join(chunks), truncated)
        except (OSError, asyncio.IncompleteReadError) as exc:
            if not answered and conn.idle_since:
                raise _Stale(_describe(exc)) from None
            raise HttpError(_describe(exc)) from None
        except h11.RemoteProtocolError as exc:
            if not answered and conn.idle_since:
                raise _Stale(f"protocol error: {exc}") from None
            raise HttpError(f"the answer is not valid HTTP/1.1: {exc}") from None
        except h11.LocalProtocolError as exc:
            raise HttpError(f"the request cannot be sent: {exc}") from None
        except HttpError:
            if not answered and conn.idle_since:
                raise _Stale("the server closed the connection before answering") from None
            raise
        finally:
            # Cancelled (timeout) or failed: the connection is in an unknown state.
            if keep:
                conn.protocol.start_next_cycle()
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _Stale(Exception):
    """A reused keep-alive connection failed before any answer: try a new one."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the server closed the connection in the middle of the answer"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    text = str(exc) or type(exc).__name__
    return text


class Pools:
    """One pool per actor, rebuilt when its origin or size changes, dropped when unused."""

    def __init__(self, idle_drop: float = 300.0) -> None:
        self._pools: dict[object, ConnectionPool] = {}
        self.idle_drop = idle_drop

    def get(self, key: object, target: Target, size: int) -> ConnectionPool:
        pool = self._pools.get(key)
        if pool is None or pool.origin != target.origin or pool.size != size:
            if pool is not None:
                pool.close()
            pool = self._pools[key] = ConnectionPool(target.origin, size)
        return pool

    def sweep(self) -> None:
        now = time.monotonic()
        for key, pool in list(self._pools.items()):
            if now - pool.last_used > self.idle_drop:
                pool.close()
                del self._pools[key]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
