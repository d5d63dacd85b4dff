"""A stand-in for Sentry on 127.0.0.1: accepts what the SDK sends to a DSN pointing at it
and keeps the envelopes (events with their attachments) for tests to read."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Item:
    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.headers.get("type", ""))

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.payload)
        return body


@dataclass
class SentryEnvelope:
    headers: dict[str, Any]
    items: list[Item] = field(default_factory=list)

    @property
    def event(self) -> dict[str, Any] | None:
        for item in self.items:
            if item.type == "event":
                return item.json()
        return None

    def attachments(self) -> dict[str, bytes]:
        return {
            str(item.headers.get("filename")): item.payload
            for item in self.items
            if item.type == "attachment"
        }


def parse_envelope(data: bytes) -> SentryEnvelope:
    """Sentry's envelope format: a JSON header line, then items, each a JSON header line and
    a payload of `length` bytes (or up to the next newline when no length is given)."""
    head, _, rest = data.partition(b"\n")
    envelope = SentryEnvelope(json.loads(head))
    while rest.strip():
        item_head, _, rest = rest.partition(b"\n")
        headers = json.loads(item_head)
        length = headers.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest.removeprefix(b"\n")
        envelope.items.append(Item(headers, payload))
    return envelope


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found, unused-ignore]

        data: bytes = brotli.decompress(body)
        return data
    return body


class FakeSentry:
    def __init__(self) -> None:
        self.envelopes: list[SentryEnvelope] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                data = _decode(body, self.headers.get("content-encoding", ""))
                with outer.lock:
                    outer.envelopes.append(parse_envelope(data))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://0123456789abcdef@127.0.0.1:{self.port}/42"

    def events(self, logger: str | None = None) -> list[tuple[dict[str, Any], SentryEnvelope]]:
        with self.lock:
            found = [(env.event, env) for env in self.envelopes if env.event is not None]
        return [
            (e, env)
            for e, env in found
            if e is not None and (not logger or e.get("logger") == logger)
        ]

    def wait_for(
        self,
        match: Callable[[dict[str, Any]], bool],
        timeout: float = 15,
        count: int = 1,
    ) -> list[tuple[dict[str, Any], SentryEnvelope]]:
        """Events that `match`, once there are `count` of them or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while True:
            found = [(e, env) for e, env in self.events() if match(e)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    async def await_for(
        self,
        match: Callable[[dict[str, Any]], bool],
        timeout: float = 15,
        count: int = 1,
    ) -> list[tuple[dict[str, Any], SentryEnvelope]]:
        """`wait_for` for tests whose app runs on their own event loop."""
        deadline = time.monotonic() + timeout
        while True:
            found = [(e, env) for e, env in self.events() if match(e)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)


@contextmanager
def fake_sentry() -> Iterator[FakeSentry]:
    server = FakeSentry()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
