"""The pure parts: signing and verifying, Retry-After, verdicts, fair sharing, rate limits,
and the HTTP client against a real local server."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from app.config import load_settings
from app.models.enums import AttemptOutcome, RequestStatus
from app.webhooks.client import ConnectionPool, HttpError, HttpResponse, Target
from app.webhooks.dispatcher import RateLimiter, deal
from app.webhooks.service import AttemptResult, Job, Kind, judge, retry_after_seconds
from app.webhooks.settings import parse_webhook_settings
from app.webhooks.signing import signature_headers
from app.webhooks.verify import WebhookVerificationError, decode_secret, verify
from tests.webhooks.conftest import free_socket, serve

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def test_sign_and_verify() -> None:
    body = b'{"a": 1}'
    headers = dict(signature_headers([KEY], "msg_1", body, timestamp=1_700_000_000))
    # The Standard Webhooks reference computation, written out.
    import hashlib
    import hmac

    expected = base64.b64encode(
        hmac.new(KEY, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    ).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    verify(SECRET, headers, body, now=1_700_000_100)
    verify(KEY, {k.upper(): v for k, v in headers.items()}, body, now=1_700_000_000)
    with pytest.raises(WebhookVerificationError, match="away from now"):
        verify(SECRET, headers, body, now=1_700_000_301)
    with pytest.raises(WebhookVerificationError, match="missing header webhook-id"):
        verify(SECRET, {}, body)
    with pytest.raises(WebhookVerificationError, match="whole number"):
        verify(SECRET, {**headers, "webhook-timestamp": "soon"}, body)
    with pytest.raises(WebhookVerificationError, match="no webhook-signature"):
        verify(SECRET, {**headers, "webhook-id": "msg_2"}, body, now=1_700_000_000)
    with pytest.raises(WebhookVerificationError, match="base64"):
        decode_secret("whsec_***")


def test_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert retry_after_seconds("tomorrow-ish", now) is None


def _job(**config: str) -> Job:
    ws = parse_webhook_settings({"http.webhook.url": "http://127.0.0.1/x", **config})
    assert ws is not None
    return Job(uuid.uuid4(), uuid.uuid4(), "a", uuid.uuid4(), "n", 1, datetime.now(UTC), ws)


def _answer(
    status: int, body: bytes = b"", truncated: bool = False, **headers: str
) -> AttemptResult:
    response = HttpResponse(status, "", list(headers.items()), body, truncated)
    return AttemptResult(datetime.now(UTC), 0.01, response)


def test_verdicts() -> None:
    settings = load_settings(None, database_url="postgresql://x/y")
    job = _job()

    def kind(result: AttemptResult, j: Job = job) -> tuple[Kind, AttemptOutcome]:
        v = judge(j, result, settings)
        return v.kind, v.outcome

    assert kind(_answer(200)) == (Kind.DELIVERED, AttemptOutcome.SUCCESS)
    assert kind(_answer(200, b'{"status": "ok"}')) == (Kind.DELIVERED, AttemptOutcome.SUCCESS)
    assert kind(_answer(200, b'{"status": "running"}')) == (Kind.DELIVERED, AttemptOutcome.RUNNING)
    assert kind(_answer(200, b'{"status": "error"}')) == (Kind.DELIVERED, AttemptOutcome.FAILURE)
    assert kind(_answer(200, b'{"status": "success", "bogus": 1}'))[0] == Kind.FAILED
    assert kind(_answer(200, b"x", truncated=True))[0] == Kind.FAILED
    assert kind(_answer(503)) == (Kind.RETRY, AttemptOutcome.RETRY)
    assert kind(AttemptResult(datetime.now(UTC), 1, error="connection refused"))[0] == Kind.RETRY
    assert kind(AttemptResult(datetime.now(UTC), 0, refused="private"))[0] == Kind.FAILED
    assert kind(_answer(410)) == (Kind.GONE, AttemptOutcome.FAILURE)
    assert kind(_answer(404)) == (Kind.FAILED, AttemptOutcome.FAILURE)
    assert kind(_answer(304)) == (Kind.FAILED, AttemptOutcome.FAILURE)
    v = judge(job, _answer(302, location="https://elsewhere.example/"), settings)
    assert v.summary == "302 Found (redirect to https://elsewhere.example/ not followed)"
    limited = HttpResponse(429, "", [("retry-after", "7")], b"", False)
    assert judge(job, AttemptResult(datetime.now(UTC), 0, limited), settings).retry_after == 7
    # Configured codes win: 304 as a success, 404 as a reattempt code, 503 as a failure.
    custom = _job(
        **{"http.webhook.success-codes": "200-299,304", "http.webhook.reattempt-codes": "404,429"}
    )
    assert kind(_answer(304), custom)[0] == Kind.DELIVERED
    assert kind(_answer(404), custom)[0] == Kind.RETRY
    assert kind(_answer(503), custom)[0] == Kind.FAILED
    state = judge(
        job, _answer(200, b'{"status": "error", "messages": [{"text": "x"}]}'), settings
    ).state
    assert state is not None
    assert state.status == RequestStatus.ERROR


def test_deal_is_round_robin() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert deal([a, b, c], {a: 10, b: 1, c: 10}, 6) == {a: 3, b: 1, c: 2}
    assert deal([a, b], {a: 1, b: 1}, 10) == {a: 1, b: 1}
    assert deal([a, b], {a: 0, b: 0}, 10) == {}


def test_rate_limiter() -> None:
    limiter = RateLimiter(5)
    assert limiter.available() == 5
    limiter.take(5)
    assert limiter.available() == 0
    assert 0 < limiter.wait() <= 0.2
    slow = RateLimiter(0.5)
    assert slow.available() == 1  # a burst of at least one
    slow.take(1)
    assert 1.9 < slow.wait() <= 2.0


async def _chunked_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"connection", b"close")] if scope["path"] == "/close" else []
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    # No content-length: uvicorn sends the body chunked.
    await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
    await send({"type": "http.response.body", "body": b"world", "more_body": False})


async def test_client_keep_alive_chunked_and_limits() -> None:
    async with serve(_chunked_app) as base:
        target = Target.of(base + "/x?y=1")
        assert target.path == "/x?y=1"
        pool = ConnectionPool(target.origin, 2)
        first = await pool.post(target, [], b"{}", 1000)
        assert (first.status, first.body, first.truncated) == (201, b"hello world", False)
        assert len(pool._idle) == 1
        kept = pool._idle[0]
        second = await pool.post(target, [("x-a", "1")], b"{}", 1000)
        assert second.body == b"hello world"
        assert pool._idle == [kept]  # the same connection, reused
        short = await pool.post(target, [], b"{}", 5)
        assert (short.body, short.truncated) == (b"hello", True)
        assert pool._idle == []  # a cut answer closes its connection
        closing = Target.of(base + "/close")
        await pool.post(closing, [], b"", 1000)
        assert pool._idle == []
        # Many at once: at most two connections.
        answers = await asyncio.gather(*(pool.post(target, [], b"", 100) for _ in range(6)))
        assert {a.status for a in answers} == {201}
        assert len(pool._idle) <= 2
        pool.close()


async def test_client_errors() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    target = Target.of(f"http://127.0.0.1:{port}/")
    with pytest.raises(HttpError, match="cannot connect"):
        await ConnectionPool(target.origin, 1).post(target, [], b"", 10)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target.of(f"http://127.0.0.1:{port}/")
    try:
        with pytest.raises(HttpError, match="not valid HTTP"):
            await ConnectionPool(target.origin, 1).post(target, [], b"", 10)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stale_keep_alive_connection_is_replaced() -> None:
    """A server that drops a kept-alive connection instead of answering its second request:
    the request goes again on a new connection."""
    connections = 0
    requests = 0

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, requests
        connections += 1
        served = 0
        while await reader.readuntil(b"\r\n\r\n"):
            requests += 1
            if served:
                writer.close()
                return
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(flaky, "127.0.0.1", 0)
    target = Target.of(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
    pool = ConnectionPool(target.origin, 1)
    try:
        assert (await pool.post(target, [], b"", 100)).body == b"ok"
        assert (await pool.post(target, [], b"", 100)).body == b"ok"
        assert (connections, requests) == (2, 3)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
