"""uvicorn's HTTP/1.1 protocol (httptools) with each response's head and body in one write.

uvicorn writes a response's head (status line and headers) when the app starts the
response, then its body when the app sends it: two system calls, and two TCP segments on
the loopback's `TCP_NODELAY` sockets, for the smallest JSON answer. `py-spy` over xbusd's
workers under `bench.http_bus`: those two writes were 8.7% of the event loop's thread (the
head's 5.1%, the body's 3.5%). Here the protocol's transport holds a write until the next
one, which it then joins (a head and its body, written together in the same turn of the
loop), or until the loop's next turn, whichever comes first: every byte goes out in order,
a lone write (a streamed body's last chunk, a `100 Continue`) waits one turn of the loop
at most, and at most one small write is held at a time (memory stays bounded whatever is
streamed). `close()` and `write_eof()` write what is held first; `abort()` drops it, as it
drops the transport's own buffer.

Used by `xbusd serve` (one process or `--workers N`) with `uvicorn.Config(http=...)`."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A write larger than this is not held (a response's head is a few hundred bytes); a held
# write and the next are joined up to this many bytes together, beyond it written apart.
HOLD_MAX = 16 * 1024
JOIN_MAX = 64 * 1024


class HeldWrites(asyncio.Transport):
    """A transport that holds one small write until the next write or the loop's next turn;
    everything else is the wrapped transport's own."""

    __slots__ = ("_flushing", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flushing = False  # a flush is scheduled for the loop's next turn

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            if 0 < len(data) <= HOLD_MAX and not self._transport.is_closing():
                self._held = bytes(data)
                if not self._flushing:
                    self._flushing = True
                    self._loop.call_soon(self._flush)
            else:
                self._transport.write(data)
            return
        self._held = None
        if len(held) + len(data) <= JOIN_MAX:
            self._transport.write(held + data)
        else:
            self._transport.write(held)
            self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        self._flushing = False
        self._write_held()

    def _write_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)

    def close(self) -> None:
        self._write_held()
        self._transport.close()

    def write_eof(self) -> None:
        self._write_held()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `HeldWrites` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeldWrites(transport, self.loop))
