"""xbusd's HTTP protocol (`app.cli.http_protocol`): a response's head and body reach the
socket in one write, and nothing else changes: streamed bodies, a chunk that waits for the
client, large bodies, HEAD, `Connection: close`, `Expect: 100-continue`, pipelined
requests. Real uvicorn on 127.0.0.1, raw sockets; the writes reaching the real transport
are counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.cli.http_protocol import HOLD_MAX, HeldWrites, HttpProtocol
from tests.conftest import served

BIG = b"x" * (3 * HOLD_MAX + 5)


class _Counting:
    """The real transport, its writes counted."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _protocol(writes: list[bytes]) -> type[HttpProtocol]:
    class Counted(HttpProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_Counting(transport, writes))  # type: ignore[arg-type]

    return Counted


def _app(go_on: asyncio.Event) -> Starlette:
    async def small(request: Request) -> Response:
        return JSONResponse({"ok": True, "body": (await request.body()).decode()})

    async def big(request: Request) -> Response:
        return Response(BIG, media_type="application/octet-stream")

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first;"
            await go_on.wait()  # the client has read the first chunk
            go_on.clear()
            yield b"second;"
            yield BIG
            yield b"last"

        return StreamingResponse(chunks(), media_type="text/plain")

    return Starlette(
        routes=[
            Route("/small", small, methods=["GET", "POST", "HEAD"]),
            Route("/big", big),
            Route("/stream", stream),
        ]
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[bytes], asyncio.Event]]:
    writes: list[bytes] = []
    go_on = asyncio.Event()
    async with served(_app(go_on), _protocol(writes)) as url:
        yield int(url.rpartition(":")[2]), writes, go_on


async def _response(
    reader: asyncio.StreamReader, head_only: bool = False
) -> tuple[bytes, dict[str, str], bytes]:
    """One response: its status line, headers and body (content-length or chunked; none
    when `head_only`, the answer to a HEAD)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = head.decode().split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    if head_only:
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = b""
    return status.encode(), headers, body


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_a_small_response_is_one_write(server: Any) -> None:
    port, writes, _ = server
    reader, writer = await _connect(port)
    for n in range(3):  # keep-alive: each response of the connection, one write each
        writes.clear()
        body = f"hello {n}".encode()
        writer.write(
            b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status, _, got = await _response(reader)
        assert status == b"HTTP/1.1 200 OK"
        assert got == b'{"ok":true,"body":"hello %d"}' % n
        await asyncio.sleep(0.05)  # anything held would be written by now
        assert len(writes) == 1, writes
        assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert writes[0].endswith(got)
    writer.close()


async def test_head_close_and_continue(server: Any) -> None:
    port, _, _ = server
    reader, writer = await _connect(port)
    writer.write(b"HEAD /small HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = await _response(reader, head_only=True)
    assert status == b"HTTP/1.1 200 OK"
    assert int(headers["content-length"]) > 0
    # The body of the HEAD is not sent: the next response follows the head at once.
    writer.write(b"GET /small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, headers, body = await _response(reader)
    assert headers["connection"] == "close"
    assert body == b'{"ok":true,"body":""}'
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after what was held

    # Expect: 100-continue: the interim answer comes before the client sends its body.
    reader, writer = await _connect(port)
    writer.write(
        b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"hi")
    status, _, body = await _response(reader)
    assert status == b"HTTP/1.1 200 OK"
    assert body == b'{"ok":true,"body":"hi"}'
    writer.close()


async def test_pipelined_requests_answered_in_order(server: Any) -> None:
    port, _, _ = server
    reader, writer = await _connect(port)
    writer.write(
        b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\na"
        b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nb"
    )
    assert (await _response(reader))[2] == b'{"ok":true,"body":"a"}'
    assert (await _response(reader))[2] == BIG
    assert (await _response(reader))[2] == b'{"ok":true,"body":"b"}'
    writer.close()


async def test_a_streamed_chunk_is_not_held_back(server: Any) -> None:
    """The first chunk goes out alone (the app waits for the client to have read it): a
    held write is written at the loop's next turn when nothing follows it."""
    port, writes, go_on = server
    reader, writer = await _connect(port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"transfer-encoding: chunked" in head
    assert await asyncio.wait_for(reader.readuntil(b"first;\r\n"), 10) == b"6\r\nfirst;\r\n"
    go_on.set()
    rest = b""
    while not rest.endswith(b"0\r\n\r\n"):
        rest += await asyncio.wait_for(reader.read(65536), 10)
    assert rest == b"7\r\nsecond;\r\n%x\r\n%s\r\n4\r\nlast\r\n0\r\n\r\n" % (len(BIG), BIG)
    assert b"".join(writes) == head + b"6\r\nfirst;\r\n" + rest  # every byte once, in order
    assert max(len(w) for w in writes) < len(BIG) + 2 * 1024  # the big chunk is not joined
    writer.close()


async def test_the_held_write_is_dropped_on_abort_and_closed_in_order() -> None:
    """`abort()` drops what is held (as the transport drops its buffer); `write_eof()` and
    `close()` write it first."""
    loop = asyncio.get_running_loop()
    served: asyncio.Future[bytes] = loop.create_future()

    async def read_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.set_result(await reader.read())
        writer.close()

    server = await asyncio.start_server(read_all, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        held = HeldWrites(transport, loop)
        held.write(b"one;")
        held.write(b"two;")
        held.write(b"three;")
        assert held.get_write_buffer_size() == len(b"three;")
        held.write_eof()
        assert await asyncio.wait_for(served, 10) == b"one;two;three;"
        held.close()

        served = loop.create_future()
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        held = HeldWrites(transport, loop)
        held.write(b"kept;")
        await asyncio.sleep(0.05)  # written at the next turn
        held.write(b"dropped")
        held.abort()
        assert await asyncio.wait_for(served, 10) == b"kept;"
    finally:
        server.close()
        await server.wait_closed()
