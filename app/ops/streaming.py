"""HTTP side of long operations: NDJSON progress lines or the result alone, and gzip."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from app.core.exceptions import XbusError
from app.ops.progress import Step

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
GZIP = "application/gzip"
R = TypeVar("R", bound=BaseModel)
# Flush the compressor after this much input, so a slow export still streams.
_GZIP_FLUSH_EVERY = 256 * 1024


def wants_ndjson(request: Request) -> bool:
    return NDJSON in request.headers.get("accept", "")


def accepts_gzip(request: Request) -> bool:
    accepted = request.headers.get("accept-encoding", "")
    for part in accepted.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip") and params.replace(" ", "") != "q=0":
            return True
    return False


def error_line(exc: BaseException, **extra: Any) -> bytes:
    if isinstance(exc, XbusError):
        body = {"status": exc.status, "detail": exc.detail}
    else:
        log.exception("operation failed mid-stream", exc_info=exc)
        body = {"status": 500, "detail": "internal error; the server log has the details"}
    return json.dumps({**extra, **body}).encode() + b"\n"


async def answer(request: Request, steps: AsyncIterator[Step[R]]) -> R | StreamingResponse:
    """The final result, or (with `Accept: application/x-ndjson`) every step as a line. The
    first step is taken here, so a bad selection is a problem+json answer, not a stream."""
    first = await anext(steps)
    if wants_ndjson(request):
        return StreamingResponse(_lines(first, steps), media_type=NDJSON)
    result = first.result
    async for step in steps:
        result = step.result or result
    assert result is not None
    return result


async def _lines(first: Step[R], steps: AsyncIterator[Step[R]]) -> AsyncIterator[bytes]:
    yield json.dumps(first.line()).encode() + b"\n"
    try:
        async for step in steps:
            yield json.dumps(step.line()).encode() + b"\n"
    except Exception as exc:
        yield error_line(exc, event="error")
    finally:
        close = getattr(steps, "aclose", None)
        if close is not None:
            await close()


async def guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A failure after the response started becomes a last `{"kind": "error"}` line (the
    status line is long gone); the missing `end` line tells the consumer too."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        yield error_line(exc, kind="error")


async def gzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    pending = 0
    async for chunk in chunks:
        out = compressor.compress(chunk)
        pending += len(chunk)
        if pending >= _GZIP_FLUSH_EVERY:
            out += compressor.flush(zlib.Z_SYNC_FLUSH)
            pending = 0
        if out:
            yield out
    yield compressor.flush()
