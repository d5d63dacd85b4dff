"""A minimal HTTP/1.1 keep-alive client for the load generators of the benchmarks.

httpx spends ~0.65 ms of CPU per request, more than a bare FastAPI endpoint does: a
benchmark driven by httpx measures its own generator. This client does what the benchmarks
need and nothing else: one connection, one request at a time, requests written in one
`write`, responses parsed with `Content-Length`, `Transfer-Encoding: chunked`, or no body
(1xx, 204, 304, HEAD), and the connection reopened when the server closes it.
No TLS, no redirects, no cookies, no proxies: 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any
from urllib.parse import urlsplit

# What a transport failure of this client can raise (sample these as status 0).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    TimeoutError,
    ValueError,
)

_NO_BODY = frozenset({204, 304})


@dataclasses.dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class RawClient:
    """One keep-alive connection to `base_url` (http://host:port), opened on first use.
    `headers` go with every request (e.g. Authorization)."""

    def __init__(
        self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 30.0
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"RawClient speaks plain http only: {base_url}")
        self.host = url.hostname
        self.port = url.port or 80
        self.timeout = timeout
        self.head = f"host: {self.host}:{self.port}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in (headers or {}).items()
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawClient:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await writer.wait_closed()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> Response:
        """Send one request, read its whole response. On a transport error or a timeout the
        connection is closed (the next request opens a new one) and the error raised."""
        if self.writer is None:
            await self._connect()
        extra = headers.items() if isinstance(headers, dict) else (headers or [])
        head = f"{method} {path} HTTP/1.1\r\n{self.head}" + "".join(
            f"{k}: {v}\r\n" for k, v in extra
        )
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"content-length: {len(body)}\r\n"
        try:
            async with asyncio.timeout(self.timeout):
                assert self.writer is not None
                self.writer.write(head.encode("latin-1") + b"\r\n" + body)
                response = await self._read(method)
        except BaseException:
            await self.close()
            raise
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    async def _read(self, method: str) -> Response:
        reader = self.reader
        assert reader is not None
        while True:
            status_line = await reader.readuntil(b"\r\n")
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
            if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
                continue
            break
        if status in _NO_BODY or method == "HEAD":
            return Response(status, headers, b"")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Response(status, headers, await self._read_chunked(reader))
        if (length := headers.get("content-length")) is not None:
            return Response(status, headers, await reader.readexactly(int(length)))
        # Neither: the body runs to the end of the connection.
        body = await reader.read()
        await self.close()
        return Response(status, headers, body)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return await self.request("GET", path, headers=headers)

    async def post(
        self,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> Response:
        return await self.request("POST", path, body, headers)

    async def post_json(self, path: str, payload: Any) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return await self.request("POST", path, body, {"content-type": "application/json"})
