"""What a 2xx acknowledges is committed before the answer leaves: the envelope and its
process are in the database when the client sees the status line."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from fastapi import FastAPI
from starlette.types import Message

from tests.bus.conftest import ENVELOPE, Bus, chain


async def test_the_envelope_is_stored_before_the_202(
    app: FastAPI, bus: Bus, db: asyncpg.Connection
) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))

    body = json.dumps(ENVELOPE).encode()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/api/v1/actors/{em['name']}/output",
        "raw_path": f"/api/v1/actors/{em['name']}/output".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"xbus.test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {acct.key}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("xbus.test", 80),
        "state": {},
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    seen: dict[str, Any] = {}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            # The status line is leaving: what does another connection see right now?
            seen["status"] = message["status"]
            seen["envelopes"] = await db.fetchval("SELECT count(*) FROM envelopes")
            seen["processes"] = await db.fetchval("SELECT count(*) FROM processes")
            seen["requests"] = await db.fetchval("SELECT count(*) FROM requests")

    await app(scope, receive, send)
    assert seen == {"status": 202, "envelopes": 1, "processes": 1, "requests": 1}
